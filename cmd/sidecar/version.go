package main

import (
	"fmt"
	"io"
	"runtime/debug"
	"strings"
)

// writeVersion writes the output of "sidecar version". The first line is
// always "sidecar <version>". The lines after it show the build
// information of info that is known, as "key: value": the Go version, the
// main module, and the version control revision, commit time and whether
// the working tree had uncommitted changes. A nil info writes only the
// first line.
func writeVersion(w io.Writer, version string, info *debug.BuildInfo) error {
	var b strings.Builder
	fmt.Fprintf(&b, "sidecar %s\n", version)
	if info == nil {
		_, err := io.WriteString(w, b.String())
		return err
	}

	line := func(key, value string) {
		if value != "" {
			fmt.Fprintf(&b, "%-10s%s\n", key+":", value)
		}
	}
	line("go", info.GoVersion)
	module := info.Main.Path
	if module != "" && info.Main.Version != "" {
		module += " " + info.Main.Version
	}
	line("module", module)

	settings := map[string]string{}
	for _, s := range info.Settings {
		settings[s.Key] = s.Value
	}
	line("vcs", settings["vcs"])
	line("revision", settings["vcs.revision"])
	line("time", settings["vcs.time"])
	line("modified", settings["vcs.modified"])

	_, err := io.WriteString(w, b.String())
	return err
}

// buildInfo returns the build information embedded in the binary, or nil
// when the binary has none.
func buildInfo() *debug.BuildInfo {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return nil
	}
	return info
}
