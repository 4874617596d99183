package main

import (
	"flag"
	"fmt"
	"maps"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/pgsidecar/sidecar/server"
)

// configPage is the page that documents every flag, relative to this
// package's directory. Problems name it by configPageName.
const (
	configPage     = "../../docs/configuration.md"
	configPageName = "docs/configuration.md"
)

// devOmits lists the serve flags that "sidecar dev" does not take, as the
// dev section of the page states.
var devOmits = []string{"debug-addr"}

// commandFlagSets returns the flag set of each command that has flags, built
// by the same functions that the commands use.
func commandFlagSets() map[string]*envFlags {
	serveCfg := server.Defaults()
	serve, _ := newServeFlags(&serveCfg)
	devCfg := server.Defaults()
	dev, _ := newDevFlags(&devCfg)
	migrate, _ := newMigrateFlags()
	pub, _ := newPubFlags()
	sub, _ := newSubFlags()
	return map[string]*envFlags{"serve": serve, "dev": dev, "migrate": migrate, "pub": pub, "sub": sub}
}

// docRow is one row of a flag table.
type docRow struct {
	line                int // 1-based line number in the file
	flag, env, defValue string
}

// docDefault returns the default column that the page must show for fl:
// the flag's DefValue, which -h prints, except that a secret shows none.
func docDefault(fl *flag.Flag) string {
	if isSecret(fl) {
		return ""
	}
	return fl.DefValue
}

var (
	flagCell = regexp.MustCompile("^`--([a-z0-9-]+)`$")
	envCell  = regexp.MustCompile("^(?:`([A-Z0-9_]+)`)?$")
	codeCell = regexp.MustCompile("^(?:`([^`]+)`)?$")
	ruleCell = regexp.MustCompile(`^:?-+:?$`)
)

// parseConfigPage returns the rows of the flag tables of page by command,
// from the sections headed "## `sidecar COMMAND`", and a problem for each
// line that does not fit the table format. Every table of the page must be
// a flag table in such a section.
func parseConfigPage(page string) (map[string][]docRow, []string) {
	commandOf := func(heading string) string {
		name, ok := strings.CutPrefix(strings.ReplaceAll(heading, "`", ""), "sidecar ")
		if !ok {
			return ""
		}
		return strings.TrimSpace(name)
	}
	return parseFlagTables(configPageName, page, commandOf, true)
}

// parseFlagTables returns the rows of the flag tables of markdown by command.
// commandOf maps the text of a "## " heading to the command whose flags the
// section documents, or "" for other sections. Tables outside those sections
// are reported when strict, and skipped otherwise.
func parseFlagTables(file, markdown string, commandOf func(heading string) string, strict bool) (map[string][]docRow, []string) {
	rows := map[string][]docRow{}
	var problems []string
	command := ""
	for i, text := range strings.Split(markdown, "\n") {
		line := i + 1
		if heading, ok := strings.CutPrefix(text, "## "); ok {
			command = commandOf(heading)
			continue
		}
		if !strings.HasPrefix(text, "|") || (command == "" && !strict) {
			continue
		}

		cells := strings.Split(strings.Trim(strings.TrimSpace(text), "|"), "|")
		for j := range cells {
			cells[j] = strings.TrimSpace(cells[j])
		}
		if len(cells) != 4 {
			problems = append(problems, fmt.Sprintf("%s:%d: a flag table row has %d cells, want 4 (flag, environment, default, meaning)", file, line, len(cells)))
			continue
		}
		if cells[0] == "flag" {
			if want := []string{"flag", "environment", "default", "meaning"}; !slices.Equal(cells, want) {
				problems = append(problems, fmt.Sprintf("%s:%d: table header is %q, want %q", file, line, cells, want))
			}
			continue
		}
		if ruleCell.MatchString(cells[0]) {
			continue
		}
		if command == "" {
			problems = append(problems, fmt.Sprintf("%s:%d: flag table row outside a \"## `sidecar COMMAND`\" section", file, line))
			continue
		}

		name := flagCell.FindStringSubmatch(cells[0])
		env := envCell.FindStringSubmatch(cells[1])
		def := codeCell.FindStringSubmatch(cells[2])
		switch {
		case name == nil:
			problems = append(problems, fmt.Sprintf("%s:%d: flag cell %q is not a flag in backticks such as `--addr`", file, line, cells[0]))
		case env == nil:
			problems = append(problems, fmt.Sprintf("%s:%d: environment cell %q of --%s is neither empty nor a variable in backticks", file, line, cells[1], name[1]))
		case def == nil:
			problems = append(problems, fmt.Sprintf("%s:%d: default cell %q of --%s is neither empty nor one code span", file, line, cells[2], name[1]))
		default:
			rows[command] = append(rows[command], docRow{line: line, flag: name[1], env: env[1], defValue: def[1]})
		}
	}
	return rows, problems
}

// checkConfigPage compares the flag tables of page with the flag sets of
// the commands, and returns one problem for each missing, unknown,
// duplicated or wrong row.
func checkConfigPage(page string, commands map[string]*envFlags) []string {
	rows, problems := parseConfigPage(page)

	for _, command := range slices.Sorted(maps.Keys(rows)) {
		if commands[command] == nil {
			problems = append(problems, fmt.Sprintf("%s: section \"sidecar %s\" documents a command that has no flags or does not exist", configPageName, command))
		}
	}

	documented := map[string]map[string]docRow{}
	for _, command := range slices.Sorted(maps.Keys(commands)) {
		byFlag := map[string]docRow{}
		for _, row := range rows[command] {
			if first, ok := byFlag[row.flag]; ok {
				problems = append(problems, fmt.Sprintf("%s:%d: sidecar %s --%s is documented twice, first at line %d", configPageName, row.line, command, row.flag, first.line))
				continue
			}
			byFlag[row.flag] = row
		}
		documented[command] = byFlag
	}

	// The dev section documents only the flags whose row differs from
	// serve's, so the rest of dev's flags fall back to the serve rows.
	if commands["dev"] != nil && commands["serve"] != nil {
		var omitted []string
		commands["serve"].fs.VisitAll(func(fl *flag.Flag) {
			if commands["dev"].fs.Lookup(fl.Name) == nil {
				omitted = append(omitted, fl.Name)
			}
		})
		if !slices.Equal(omitted, devOmits) {
			problems = append(problems, fmt.Sprintf("%s: sidecar dev lacks the serve flags %q, but its section names %q as the only ones it lacks", configPageName, omitted, devOmits))
		}
		for name, row := range documented["serve"] {
			if _, ok := documented["dev"][name]; !ok && !slices.Contains(devOmits, name) {
				documented["dev"][name] = row
			}
		}
	}

	for _, command := range slices.Sorted(maps.Keys(commands)) {
		f := commands[command]
		f.fs.VisitAll(func(fl *flag.Flag) {
			row, ok := documented[command][fl.Name]
			if !ok {
				problems = append(problems, fmt.Sprintf("sidecar %s --%s (environment %q, default %q) is missing from %s", command, fl.Name, f.env[fl.Name], docDefault(fl), configPageName))
				return
			}
			if row.env != f.env[fl.Name] {
				problems = append(problems, fmt.Sprintf("%s:%d: sidecar %s --%s has environment %q, but the flag reads %q", configPageName, row.line, command, fl.Name, row.env, f.env[fl.Name]))
			}
			if want := docDefault(fl); row.defValue != want {
				problems = append(problems, fmt.Sprintf("%s:%d: sidecar %s --%s has default %q, but the flag's default is %q", configPageName, row.line, command, fl.Name, row.defValue, want))
			}
		})
		for _, name := range slices.Sorted(maps.Keys(documented[command])) {
			if f.fs.Lookup(name) == nil {
				problems = append(problems, fmt.Sprintf("%s:%d: sidecar %s --%s is documented, but the command has no such flag", configPageName, documented[command][name].line, command, name))
			}
		}
	}
	return problems
}

func readConfigPage(t *testing.T) string {
	t.Helper()
	page, err := os.ReadFile(configPage)
	if err != nil {
		t.Fatalf("read the configuration page: %v", err)
	}
	return string(page)
}

func TestConfigurationPageMatchesFlags(t *testing.T) {
	page := readConfigPage(t)
	for _, problem := range checkConfigPage(page, commandFlagSets()) {
		t.Error(problem)
	}
}

// editRow returns page with the row of flag name in the section of
// command replaced by edit(cells), where cells are the row's trimmed
// cells. An empty result deletes the row.
func editRow(t *testing.T, page, command, name string, edit func(cells []string) string) string {
	t.Helper()
	start := strings.Index(page, "\n## `sidecar "+command+"`\n")
	if start < 0 {
		t.Fatalf("page has no section for sidecar %s", command)
	}
	offset := strings.Index(page[start:], "\n| `--"+name+"` |")
	if offset < 0 {
		t.Fatalf("sidecar %s section has no row for --%s", command, name)
	}
	begin := start + offset + 1
	end := begin + strings.Index(page[begin:], "\n") + 1

	cells := strings.Split(strings.Trim(page[begin:end-1], "|"), "|")
	for i := range cells {
		cells[i] = strings.TrimSpace(cells[i])
	}
	replacement := edit(cells)
	if replacement != "" {
		replacement += "\n"
	}
	return page[:begin] + replacement + page[end:]
}

// tableRow formats cells as a Markdown table row.
func tableRow(cells []string) string {
	return "| " + strings.Join(cells, " | ") + " |"
}

func TestCheckConfigPageFindsDrift(t *testing.T) {
	page := readConfigPage(t)
	commands := commandFlagSets()
	if problems := checkConfigPage(page, commands); len(problems) > 0 {
		t.Fatalf("the page must match before it is broken, got %q", problems)
	}

	setCell := func(i int, value string) func([]string) string {
		return func(cells []string) string {
			cells[i] = value
			return tableRow(cells)
		}
	}
	deleteRow := func([]string) string { return "" }
	tests := []struct {
		name string
		edit func(page string) string
		want string // substring of one reported problem
	}{
		{
			name: "row removed",
			edit: func(page string) string {
				return editRow(t, page, "serve", "drain-spread", deleteRow)
			},
			want: "sidecar serve --drain-spread (environment \"SIDECAR_DRAIN_SPREAD\", default \"7s\") is missing",
		},
		{
			name: "wrong default",
			edit: func(page string) string {
				return editRow(t, page, "serve", "retention", setCell(2, "`24h`"))
			},
			want: "sidecar serve --retention has default \"24h\", but the flag's default is \"24h0m0s\"",
		},
		{
			name: "default removed",
			edit: func(page string) string {
				return editRow(t, page, "serve", "addr", setCell(2, ""))
			},
			want: "sidecar serve --addr has default \"\", but the flag's default is \":7070\"",
		},
		{
			name: "wrong variable",
			edit: func(page string) string {
				return editRow(t, page, "serve", "metrics-addr", setCell(1, "`SIDECAR_METRICS`"))
			},
			want: "sidecar serve --metrics-addr has environment \"SIDECAR_METRICS\", but the flag reads \"SIDECAR_METRICS_ADDR\"",
		},
		{
			name: "secret given a default",
			edit: func(page string) string {
				return editRow(t, page, "serve", "metrics-token", setCell(2, "`changeme`"))
			},
			want: "sidecar serve --metrics-token has default \"changeme\", but the flag's default is \"\"",
		},
		{
			name: "unknown flag",
			edit: func(page string) string {
				return editRow(t, page, "serve", "addr", setCell(0, "`--address`"))
			},
			want: "sidecar serve --address is documented, but the command has no such flag",
		},
		{
			name: "row twice",
			edit: func(page string) string {
				return editRow(t, page, "serve", "heartbeat", func(cells []string) string {
					return tableRow(cells) + "\n" + tableRow(cells)
				})
			},
			want: "sidecar serve --heartbeat is documented twice",
		},
		{
			name: "dev override wrong",
			edit: func(page string) string {
				return editRow(t, page, "dev", "addr", setCell(2, "`:7070`"))
			},
			want: "sidecar dev --addr has default \":7070\", but the flag's default is \"127.0.0.1:7070\"",
		},
		{
			name: "dev override removed",
			edit: func(page string) string {
				return editRow(t, page, "dev", "addr", deleteRow)
			},
			want: "sidecar dev --addr has default \":7070\", but the flag's default is \"127.0.0.1:7070\"",
		},
		{
			name: "other command row removed",
			edit: func(page string) string {
				return editRow(t, page, "sub", "since", deleteRow)
			},
			want: "sidecar sub --since (environment \"\", default \"-1\") is missing",
		},
		{
			name: "variable added to a flag without one",
			edit: func(page string) string {
				return editRow(t, page, "pub", "ephemeral", setCell(1, "`SIDECAR_EPHEMERAL`"))
			},
			want: "sidecar pub --ephemeral has environment \"SIDECAR_EPHEMERAL\", but the flag reads \"\"",
		},
		{
			name: "malformed row",
			edit: func(page string) string {
				return editRow(t, page, "serve", "heartbeat", setCell(0, "--heartbeat"))
			},
			want: "flag cell \"--heartbeat\" is not a flag in backticks",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			problems := checkConfigPage(tt.edit(page), commands)
			found := slices.ContainsFunc(problems, func(p string) bool { return strings.Contains(p, tt.want) })
			if !found {
				t.Errorf("checkConfigPage(broken page) = %q, want a problem containing %q", problems, tt.want)
			}
		})
	}
}

func TestCheckConfigPageFindsUndocumentedFlag(t *testing.T) {
	page := readConfigPage(t)
	commands := commandFlagSets()
	commands["migrate"].fs.Bool("dry-run", false, "print the migrations without applying them")
	commands["migrate"].bind("dry-run", "SIDECAR_DRY_RUN")

	problems := checkConfigPage(page, commands)
	want := "sidecar migrate --dry-run (environment \"SIDECAR_DRY_RUN\", default \"false\") is missing"
	if !slices.ContainsFunc(problems, func(p string) bool { return strings.Contains(p, want) }) {
		t.Errorf("checkConfigPage with an extra migrate flag = %q, want a problem containing %q", problems, want)
	}
}

// readmeSection is the README section whose table lists the main settings.
const readmeSection = "Configuration"

func TestReadmeConfigurationMatchesFlags(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatalf("read the README: %v", err)
	}
	commandOf := func(heading string) string {
		if strings.TrimSpace(heading) == readmeSection {
			return "serve"
		}
		return ""
	}
	rows, problems := parseFlagTables("README.md", string(readme), commandOf, false)
	for _, problem := range problems {
		t.Error(problem)
	}
	if len(rows["serve"]) == 0 {
		t.Fatalf("README.md has no flag table in its %q section", readmeSection)
	}

	f := commandFlagSets()["serve"]
	for _, row := range rows["serve"] {
		fl := f.fs.Lookup(row.flag)
		if fl == nil {
			t.Errorf("README.md:%d: --%s is not a flag of sidecar serve", row.line, row.flag)
			continue
		}
		if row.env != f.env[row.flag] {
			t.Errorf("README.md:%d: --%s has environment %q, but the flag reads %q", row.line, row.flag, row.env, f.env[row.flag])
		}
		if want := docDefault(fl); row.defValue != want {
			t.Errorf("README.md:%d: --%s has default %q, but the flag's default is %q", row.line, row.flag, row.defValue, want)
		}
	}
}
