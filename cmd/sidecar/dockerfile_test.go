package main

import (
	"debug/elf"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/pgsidecar/sidecar/server"
)

// The test in this file builds the binary the way the Dockerfile does and
// checks what the image relies on: a static binary, the injected version,
// a non-root user and a HEALTHCHECK that runs "sidecar health".

const dockerfilePath = "../../Dockerfile"

// dockerInstruction is one Dockerfile instruction, continuation lines
// joined.
type dockerInstruction struct {
	line    int    // first line, for messages
	keyword string // upper case, such as RUN
	args    string
}

// dockerStage is the instructions from one FROM up to the next.
type dockerStage struct {
	name         string // the AS name, empty when unnamed
	instructions []dockerInstruction
}

// parseDockerfile splits a Dockerfile into stages. It handles comments,
// parser directives and backslash continuations, which is all the
// repository's Dockerfile uses. Heredocs and a changed escape character
// are not supported.
func parseDockerfile(text string) ([]dockerStage, error) {
	var stages []dockerStage
	var pending strings.Builder
	start := 0
	for i, line := range strings.Split(text, "\n") {
		trimmed := strings.TrimSpace(line)
		if pending.Len() == 0 && (trimmed == "" || strings.HasPrefix(trimmed, "#")) {
			continue
		}
		if pending.Len() == 0 {
			start = i + 1
		}
		if body, ok := strings.CutSuffix(trimmed, `\`); ok {
			pending.WriteString(body + " ")
			continue
		}
		pending.WriteString(trimmed)

		keyword, args, _ := strings.Cut(pending.String(), " ")
		pending.Reset()
		in := dockerInstruction{line: start, keyword: strings.ToUpper(keyword), args: strings.TrimSpace(args)}
		if in.keyword == "FROM" {
			fields := strings.Fields(in.args)
			st := dockerStage{}
			if len(fields) == 3 && strings.EqualFold(fields[1], "AS") {
				st.name = fields[2]
			}
			stages = append(stages, st)
		}
		if len(stages) == 0 {
			if in.keyword == "ARG" {
				continue // an ARG before the first FROM applies to FROM lines only
			}
			return nil, fmt.Errorf("line %d: %s before the first FROM", in.line, in.keyword)
		}
		st := &stages[len(stages)-1]
		st.instructions = append(st.instructions, in)
	}
	if pending.Len() > 0 {
		return nil, fmt.Errorf("line %d: continuation at the end of the file", start)
	}
	if len(stages) == 0 {
		return nil, fmt.Errorf("no FROM instruction")
	}
	return stages, nil
}

// shellWords splits a shell command line into words the way sh does for
// a simple command. Blanks separate words, single quotes keep their text
// as it is, and double quotes keep theirs except for a backslash before
// " \ $ or `. A backslash outside quotes escapes the next character.
// expand replaces $NAME and ${NAME} outside single quotes. Pipes,
// redirections and command substitution are rejected.
func shellWords(line string, expand func(string) string) ([]string, error) {
	var words []string
	var word, raw strings.Builder
	inWord := false
	flush := func() {
		word.WriteString(os.Expand(raw.String(), expand))
		raw.Reset()
	}
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case c == ' ' || c == '\t':
			if inWord {
				flush()
				words = append(words, word.String())
				word.Reset()
				inWord = false
			}
		case c == '\'':
			end := strings.IndexByte(line[i+1:], '\'')
			if end < 0 {
				return nil, fmt.Errorf("unterminated single quote in %q", line)
			}
			flush()
			word.WriteString(line[i+1 : i+1+end])
			i += end + 1
			inWord = true
		case c == '"':
			i++
			for ; i < len(line) && line[i] != '"'; i++ {
				if line[i] == '\\' && i+1 < len(line) && strings.IndexByte("\"\\$`", line[i+1]) >= 0 {
					i++
					flush() // an escaped character is not expanded
					word.WriteByte(line[i])
					continue
				}
				raw.WriteByte(line[i])
			}
			if i == len(line) {
				return nil, fmt.Errorf("unterminated double quote in %q", line)
			}
			inWord = true
		case c == '\\' && i+1 < len(line):
			i++
			flush()
			word.WriteByte(line[i])
			inWord = true
		case strings.IndexByte("|&;<>()`", c) >= 0:
			return nil, fmt.Errorf("shell operator %q in %q is not supported", c, line)
		default:
			raw.WriteByte(c)
			inWord = true
		}
	}
	if inWord {
		flush()
		words = append(words, word.String())
	}
	return words, nil
}

func TestShellWords(t *testing.T) {
	vars := map[string]string{"VERSION": "v1.2.3"}
	expand := func(name string) string { return vars[name] }
	tests := []struct {
		line string
		want []string
	}{
		{`go build ./cmd/sidecar`, []string{"go", "build", "./cmd/sidecar"}},
		{`CGO_ENABLED=0  go`, []string{"CGO_ENABLED=0", "go"}},
		{`-ldflags "-s -w -X main.version=${VERSION}"`, []string{"-ldflags", "-s -w -X main.version=v1.2.3"}},
		{`-X main.version=$VERSION`, []string{"-X", "main.version=v1.2.3"}},
		{`'${VERSION}' "a\"b" a\ b`, []string{"${VERSION}", `a"b`, "a b"}},
		{`x"y"'z'`, []string{"xyz"}},
		{`""`, []string{""}},
		{`\$VERSION "\${VERSION}"`, []string{"$VERSION", "${VERSION}"}},
	}
	for _, tt := range tests {
		got, err := shellWords(tt.line, expand)
		if err != nil {
			t.Errorf("shellWords(%q): %v", tt.line, err)
			continue
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("shellWords(%q) = %q, want %q", tt.line, got, tt.want)
		}
	}

	for _, line := range []string{`"open`, `'open`, `go build && true`} {
		if got, err := shellWords(line, expand); err == nil {
			t.Errorf("shellWords(%q) = %q, want an error", line, got)
		}
	}
}

// goBuild is the go build command of a RUN instruction.
type goBuild struct {
	env    []string // NAME=value assignments before the command
	flags  []string // the flags of go build, without -o
	output string   // the -o value
	pkg    string
}

// parseGoBuild reads "NAME=value... go build FLAGS... PACKAGE" from a RUN
// instruction in shell form.
func parseGoBuild(run string, expand func(string) string) (goBuild, error) {
	words, err := shellWords(run, expand)
	if err != nil {
		return goBuild{}, err
	}

	var b goBuild
	for len(words) > 0 && strings.Contains(words[0], "=") {
		b.env = append(b.env, words[0])
		words = words[1:]
	}
	if len(words) < 3 || words[0] != "go" || words[1] != "build" {
		return goBuild{}, fmt.Errorf("RUN %s: want NAME=value... go build FLAGS... PACKAGE", run)
	}
	words = words[2:]

	for i := 0; i < len(words); i++ {
		w := words[i]
		switch {
		case !strings.HasPrefix(w, "-"):
			if i != len(words)-1 {
				return goBuild{}, fmt.Errorf("RUN %s: want one package, as the last word", run)
			}
			b.pkg = w
		case w == "-o" || w == "-ldflags" || w == "-tags" || w == "-gcflags":
			if i+1 == len(words) {
				return goBuild{}, fmt.Errorf("RUN %s: %s has no value", run, w)
			}
			if w == "-o" {
				b.output = words[i+1]
			} else {
				b.flags = append(b.flags, w, words[i+1])
			}
			i++
		default:
			b.flags = append(b.flags, w)
		}
	}
	if b.pkg == "" || b.output == "" {
		return goBuild{}, fmt.Errorf("RUN %s: want -o OUTPUT and a package", run)
	}
	return b, nil
}

// flagValue returns the value after flag in flags, or "" when it is absent.
func flagValue(flags []string, flag string) string {
	i := slices.Index(flags, flag)
	if i < 0 || i+1 == len(flags) {
		return ""
	}
	return flags[i+1]
}

// find returns the instructions of st with keyword.
func (st dockerStage) find(keyword string) []dockerInstruction {
	var found []dockerInstruction
	for _, in := range st.instructions {
		if in.keyword == keyword {
			found = append(found, in)
		}
	}
	return found
}

// buildArgs returns the ARG defaults of st, with overrides applied as
// docker build --build-arg does.
func (st dockerStage) buildArgs(overrides map[string]string) map[string]string {
	args := map[string]string{}
	for _, in := range st.find("ARG") {
		name, value, _ := strings.Cut(in.args, "=")
		args[name] = value
	}
	for name, value := range overrides {
		if _, ok := args[name]; ok {
			args[name] = value
		}
	}
	return args
}

func TestDockerfileBuild(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the image runs on Linux, and the static check reads the binary as an ELF file")
	}
	if testing.Short() {
		t.Skip("builds the whole binary")
	}

	text, err := os.ReadFile(dockerfilePath)
	if err != nil {
		t.Fatal(err)
	}
	stages, err := parseDockerfile(string(text))
	if err != nil {
		t.Fatalf("%s: %v", dockerfilePath, err)
	}

	// The build stage is the one whose RUN runs go build.
	const testVersion = "v0.0.0-dockerfile-test"
	var build goBuild
	var buildStage dockerStage
	for _, st := range stages {
		for _, in := range st.find("RUN") {
			if !strings.Contains(in.args, "go build") {
				continue
			}
			args := st.buildArgs(map[string]string{"VERSION": testVersion})
			expand := func(name string) string {
				v, ok := args[name]
				if !ok {
					t.Errorf("%s line %d uses $%s, which is not an ARG of its stage", dockerfilePath, in.line, name)
				}
				return v
			}
			if build, err = parseGoBuild(in.args, expand); err != nil {
				t.Fatalf("%s line %d: %v", dockerfilePath, in.line, err)
			}
			buildStage = st
		}
	}
	if build.pkg == "" {
		t.Fatalf("%s has no RUN instruction with go build", dockerfilePath)
	}
	if _, ok := buildStage.buildArgs(nil)["VERSION"]; !ok {
		t.Errorf("build stage has no ARG VERSION, so docker build --build-arg VERSION=... sets nothing")
	}

	if !slices.Contains(build.env, "CGO_ENABLED=0") {
		t.Errorf("go build runs with %q, want CGO_ENABLED=0 for a static binary", build.env)
	}
	if !slices.Contains(build.flags, "-trimpath") {
		t.Errorf("go build flags %q lack -trimpath", build.flags)
	}
	if ldflags := flagValue(build.flags, "-ldflags"); !strings.Contains(ldflags, "-X main.version="+testVersion) {
		t.Errorf("go build -ldflags %q does not set main.version from ARG VERSION", ldflags)
	}
	if build.pkg != "./cmd/sidecar" {
		t.Errorf("go build package = %q, want ./cmd/sidecar", build.pkg)
	}

	// Build as the Dockerfile does, from the repository root that
	// COPY . . puts in the WORKDIR.
	bin := filepath.Join(t.TempDir(), "sidecar")
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to build the binary: %v", err)
	}
	args := append([]string{"build"}, build.flags...)
	args = append(args, "-o", bin, build.pkg)
	cmd := exec.CommandContext(t.Context(), goTool, args...)
	cmd.Dir = filepath.Dir(dockerfilePath)
	cmd.Env = append(os.Environ(), build.env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", cmd, err, out)
	}

	checkStatic(t, bin)

	out, err := exec.CommandContext(t.Context(), bin, "version").Output()
	if err != nil {
		t.Fatalf("sidecar version: %v", err)
	}
	firstLine, _, _ := strings.Cut(string(out), "\n")
	if want := "sidecar " + testVersion; firstLine != want {
		t.Errorf("sidecar version prints %q first, want %q", firstLine, want)
	}

	checkRuntimeStage(t, stages, buildStage, build.output)
}

// checkStatic fails t unless the ELF file at bin needs no dynamic loader
// and no shared library, as the distroless static image requires.
func checkStatic(t *testing.T, bin string) {
	t.Helper()

	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("binary has a PT_INTERP program header, so it needs a dynamic loader")
		}
	}
	needed, err := f.DynString(elf.DT_NEEDED)
	if err != nil {
		t.Fatalf("read DT_NEEDED: %v", err)
	}
	if len(needed) > 0 {
		t.Errorf("binary needs shared libraries %q", needed)
	}
}

// checkRuntimeStage checks the last stage of the Dockerfile: it copies the
// built binary, runs as a non-root user, and its HEALTHCHECK and
// ENTRYPOINT run that binary.
func checkRuntimeStage(t *testing.T, stages []dockerStage, buildStage dockerStage, output string) {
	t.Helper()
	final := stages[len(stages)-1]

	// Find where the binary lands, as in
	// COPY --from=build /out/sidecar /usr/local/bin/sidecar.
	binPath := ""
	for _, in := range final.find("COPY") {
		fields := strings.Fields(in.args)
		if len(fields) == 3 && fields[0] == "--from="+buildStage.name && fields[1] == output {
			binPath = fields[2]
		}
	}
	if buildStage.name == "" || binPath == "" {
		t.Fatalf("runtime stage does not COPY --from=%s %s", buildStage.name, output)
	}

	users := final.find("USER")
	if len(users) == 0 {
		t.Error("runtime stage has no USER, so it runs as root")
	} else {
		user, _, _ := strings.Cut(users[len(users)-1].args, ":")
		if uid, err := strconv.Atoi(user); (err == nil && uid == 0) || user == "root" {
			t.Errorf("runtime stage USER = %q, want a non-root user", users[len(users)-1].args)
		}
	}

	var entrypoint []string
	if eps := final.find("ENTRYPOINT"); len(eps) > 0 {
		if err := json.Unmarshal([]byte(eps[len(eps)-1].args), &entrypoint); err != nil {
			t.Errorf("ENTRYPOINT %s: want the exec form, a JSON array, because the image has no shell: %v", eps[len(eps)-1].args, err)
		}
	}
	if len(entrypoint) != 1 || entrypoint[0] != binPath {
		t.Errorf("ENTRYPOINT = %q, want [%q]", entrypoint, binPath)
	}

	checks := final.find("HEALTHCHECK")
	if len(checks) == 0 {
		t.Fatal("runtime stage has no HEALTHCHECK")
	}
	health := checks[len(checks)-1].args
	_, command, ok := strings.Cut(health, "CMD ")
	if !ok {
		t.Fatalf("HEALTHCHECK %s: want options, then CMD", health)
	}
	var argv []string
	if err := json.Unmarshal([]byte(strings.TrimSpace(command)), &argv); err != nil {
		t.Fatalf("HEALTHCHECK CMD %s: want the exec form, a JSON array, because the image has no shell: %v", command, err)
	}
	if len(argv) < 2 || len(argv) > 3 || argv[0] != binPath || argv[1] != "health" {
		t.Fatalf("HEALTHCHECK CMD = %q, want [%q health URL]", argv, binPath)
	}
	if path.Base(binPath) != "sidecar" {
		t.Errorf("binary path in the image = %q, want a file named sidecar", binPath)
	}

	// The health check must reach the port that the image's SIDECAR_ADDR
	// listens on, and EXPOSE should name it.
	healthURL := "http://127.0.0.1:7070" // runHealth's default
	if len(argv) == 3 {
		healthURL = argv[2]
	}
	u, err := url.Parse(healthURL)
	if err != nil {
		t.Fatalf("HEALTHCHECK URL %q: %v", healthURL, err)
	}
	listenAddr := server.Defaults().Addr
	for _, in := range final.find("ENV") {
		if v, ok := strings.CutPrefix(in.args, "SIDECAR_ADDR="); ok {
			listenAddr = v
		}
	}
	_, listenPort, err := net.SplitHostPort(listenAddr)
	if err != nil {
		t.Fatalf("SIDECAR_ADDR %q: %v", listenAddr, err)
	}
	if u.Port() != listenPort {
		t.Errorf("HEALTHCHECK URL %q uses port %q, want %s from SIDECAR_ADDR=%q", healthURL, u.Port(), listenPort, listenAddr)
	}
	exposed := false
	for _, in := range final.find("EXPOSE") {
		for _, p := range strings.Fields(in.args) {
			exposed = exposed || strings.TrimSuffix(p, "/tcp") == listenPort
		}
	}
	if !exposed {
		t.Errorf("runtime stage does not EXPOSE port %s of SIDECAR_ADDR=%q", listenPort, listenAddr)
	}
}
