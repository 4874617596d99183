package pgcluster

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseVersion(t *testing.T) {
	tests := []struct {
		name   string
		want   []int
		wantOK bool
	}{
		{"15", []int{15}, true},
		{"9.6", []int{9, 6}, true},
		{"16.2", []int{16, 2}, true},
		{"", nil, false},
		{"15beta", nil, false},
		{"9..6", nil, false},
		{"-1", nil, false},
	}
	for _, tt := range tests {
		got, ok := parseVersion(tt.name)
		if ok != tt.wantOK || !cmp.Equal(got, tt.want) {
			t.Errorf("parseVersion(%q) = %v, %v, want %v, %v", tt.name, got, ok, tt.want, tt.wantOK)
		}
	}
}

func TestDebianBinDirsHighestFirst(t *testing.T) {
	root := t.TempDir()
	for _, name := range []string{"9.6", "15", "10", "common", "16"} {
		if err := os.MkdirAll(filepath.Join(root, name, "bin"), 0o755); err != nil {
			t.Fatal(err)
		}
	}

	got := debianBinDirs(root)

	want := []string{
		filepath.Join(root, "16", "bin"),
		filepath.Join(root, "15", "bin"),
		filepath.Join(root, "10", "bin"),
		filepath.Join(root, "9.6", "bin"),
	}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("debianBinDirs() mismatch (-got +want):\n%s", diff)
	}
}

func TestDebianBinDirsMissingRoot(t *testing.T) {
	if got := debianBinDirs(filepath.Join(t.TempDir(), "missing")); got != nil {
		t.Errorf("debianBinDirs(missing) = %v, want nil", got)
	}
}

func TestFirstWithBinaries(t *testing.T) {
	root := t.TempDir()
	onlyInitdb := filepath.Join(root, "only-initdb")
	notExecutable := filepath.Join(root, "not-executable")
	complete := filepath.Join(root, "complete")
	alsoComplete := filepath.Join(root, "also-complete")

	writeFile(t, filepath.Join(onlyInitdb, "initdb"), 0o755)
	writeFile(t, filepath.Join(notExecutable, "initdb"), 0o644)
	writeFile(t, filepath.Join(notExecutable, "postgres"), 0o644)
	for _, dir := range []string{complete, alsoComplete} {
		writeFile(t, filepath.Join(dir, "initdb"), 0o755)
		writeFile(t, filepath.Join(dir, "postgres"), 0o755)
	}

	got, ok := firstWithBinaries([]string{filepath.Join(root, "missing"), onlyInitdb, notExecutable, complete, alsoComplete})
	if !ok || got != complete {
		t.Errorf("firstWithBinaries() = %q, %v, want %q, true", got, ok, complete)
	}

	got, ok = firstWithBinaries([]string{onlyInitdb, notExecutable})
	if ok {
		t.Errorf("firstWithBinaries(incomplete dirs) = %q, true, want false", got)
	}
}

func writeFile(t *testing.T, path string, perm os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, nil, perm); err != nil {
		t.Fatal(err)
	}
}
