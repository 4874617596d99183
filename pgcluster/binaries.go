package pgcluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// ErrBinariesNotFound is wrapped by the error of FindBinaries and Start when
// no directory contains both initdb and postgres.
var ErrBinariesNotFound = errors.New("initdb and postgres not found")

// debianRoot is where Debian's postgresql packages install one bin directory
// per major version, as /usr/lib/postgresql/<version>/bin.
const debianRoot = "/usr/lib/postgresql"

// FindBinaries returns the first directory that contains both an initdb and a
// postgres executable. It tries, in order: the directory of initdb found on
// PATH (and the directory it resolves to when it is a symbolic link), the
// output of pg_config --bindir, and the bin directory of the highest version
// under /usr/lib/postgresql. The error wraps ErrBinariesNotFound when none
// qualifies.
func FindBinaries() (bindir string, err error) {
	var candidates []string

	if initdb, err := exec.LookPath("initdb"); err == nil {
		candidates = append(candidates, filepath.Dir(initdb))
		if resolved, err := filepath.EvalSymlinks(initdb); err == nil {
			candidates = append(candidates, filepath.Dir(resolved))
		}
	}

	if dir := pgConfigBindir(); dir != "" {
		candidates = append(candidates, dir)
	}

	candidates = append(candidates, debianBinDirs(debianRoot)...)

	if dir, ok := firstWithBinaries(candidates); ok {
		return dir, nil
	}
	return "", fmt.Errorf("%w on PATH, in pg_config --bindir or in %s/*/bin: install Debian's postgresql package (apt-get install postgresql)", ErrBinariesNotFound, debianRoot)
}

// pgConfigBindir returns the output of pg_config --bindir, or "" when
// pg_config is missing or fails.
func pgConfigBindir() string {
	path, err := exec.LookPath("pg_config")
	if err != nil {
		return ""
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	out, err := exec.CommandContext(ctx, path, "--bindir").Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

// debianBinDirs returns root/<version>/bin for every numeric version
// directory under root, highest version first.
func debianBinDirs(root string) []string {
	entries, err := os.ReadDir(root)
	if err != nil {
		return nil
	}

	type versionDir struct {
		version []int
		dir     string
	}
	var found []versionDir
	for _, entry := range entries {
		version, ok := parseVersion(entry.Name())
		if !ok {
			continue
		}
		found = append(found, versionDir{version, filepath.Join(root, entry.Name(), "bin")})
	}

	slices.SortFunc(found, func(a, b versionDir) int {
		return slices.Compare(b.version, a.version)
	})

	dirs := make([]string, len(found))
	for i, f := range found {
		dirs[i] = f.dir
	}
	return dirs
}

// parseVersion parses a dotted version such as "15" or "9.6" into its
// numeric parts.
func parseVersion(name string) ([]int, bool) {
	var parts []int
	for field := range strings.SplitSeq(name, ".") {
		n, err := strconv.Atoi(field)
		if err != nil || n < 0 {
			return nil, false
		}
		parts = append(parts, n)
	}
	return parts, true
}

// firstWithBinaries returns the first directory that contains executable
// initdb and postgres files.
func firstWithBinaries(dirs []string) (string, bool) {
	for _, dir := range dirs {
		if isExecutable(filepath.Join(dir, "initdb")) && isExecutable(filepath.Join(dir, "postgres")) {
			return dir, true
		}
	}
	return "", false
}

func isExecutable(path string) bool {
	info, err := os.Stat(path)
	return err == nil && info.Mode().IsRegular() && info.Mode().Perm()&0o111 != 0
}
