package main

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/pgsidecar/sidecar/server"
)

// The tests in this file check the Kubernetes example in deploy/kubernetes
// against the flags that this package declares, so that a renamed
// variable, a changed default or a moved port fails here rather than in
// a cluster.

const manifestDir = "../../deploy/kubernetes"

// sidecarContainer is the name of the container that runs "sidecar serve".
const sidecarContainer = "sidecar"

// manifests contains the objects of deploy/kubernetes, one of each kind.
type manifests struct {
	deployment workload
	job        workload
	service    service
	configMaps map[string]map[string]string // name to data
	secrets    map[string]map[string]string // name to decoded data
}

type objectMeta struct {
	Name   string            `yaml:"name"`
	Labels map[string]string `yaml:"labels"`
}

// workload is the part of a Deployment or a Job that the tests read.
type workload struct {
	Metadata objectMeta `yaml:"metadata"`
	Spec     struct {
		Selector struct {
			MatchLabels map[string]string `yaml:"matchLabels"`
		} `yaml:"selector"`
		Template struct {
			Metadata objectMeta `yaml:"metadata"`
			Spec     podSpec    `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

type podSpec struct {
	TerminationGracePeriodSeconds *int64          `yaml:"terminationGracePeriodSeconds"`
	RestartPolicy                 string          `yaml:"restartPolicy"`
	SecurityContext               securityContext `yaml:"securityContext"`
	Containers                    []container     `yaml:"containers"`
}

// securityContext contains the fields shared by a pod's and a container's
// security context. The container's fields win where both are set.
type securityContext struct {
	RunAsNonRoot             *bool  `yaml:"runAsNonRoot"`
	RunAsUser                *int64 `yaml:"runAsUser"`
	ReadOnlyRootFilesystem   *bool  `yaml:"readOnlyRootFilesystem"`
	AllowPrivilegeEscalation *bool  `yaml:"allowPrivilegeEscalation"`
	Capabilities             struct {
		Drop []string `yaml:"drop"`
	} `yaml:"capabilities"`
	SeccompProfile struct {
		Type string `yaml:"type"`
	} `yaml:"seccompProfile"`
}

type container struct {
	Name    string   `yaml:"name"`
	Image   string   `yaml:"image"`
	Command []string `yaml:"command"`
	Args    []string `yaml:"args"`
	Ports   []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
	} `yaml:"ports"`
	Env []struct {
		Name      string `yaml:"name"`
		Value     string `yaml:"value"`
		ValueFrom *struct {
			ConfigMapKeyRef *keyRef `yaml:"configMapKeyRef"`
			SecretKeyRef    *keyRef `yaml:"secretKeyRef"`
		} `yaml:"valueFrom"`
	} `yaml:"env"`
	EnvFrom []struct {
		Prefix       string `yaml:"prefix"`
		ConfigMapRef *struct {
			Name string `yaml:"name"`
		} `yaml:"configMapRef"`
		SecretRef *struct {
			Name string `yaml:"name"`
		} `yaml:"secretRef"`
	} `yaml:"envFrom"`
	LivenessProbe  *probe `yaml:"livenessProbe"`
	ReadinessProbe *probe `yaml:"readinessProbe"`
	Lifecycle      struct {
		PreStop *struct {
			Sleep *struct {
				Seconds int64 `yaml:"seconds"`
			} `yaml:"sleep"`
		} `yaml:"preStop"`
	} `yaml:"lifecycle"`
	Resources struct {
		Requests map[string]string `yaml:"requests"`
		Limits   map[string]string `yaml:"limits"`
	} `yaml:"resources"`
	SecurityContext securityContext `yaml:"securityContext"`
}

type keyRef struct {
	Name string `yaml:"name"`
	Key  string `yaml:"key"`
}

type probe struct {
	HTTPGet *struct {
		Path string    `yaml:"path"`
		Port portValue `yaml:"port"`
	} `yaml:"httpGet"`
}

type service struct {
	Metadata objectMeta `yaml:"metadata"`
	Spec     struct {
		Selector map[string]string `yaml:"selector"`
		Ports    []struct {
			Name       string     `yaml:"name"`
			Port       int        `yaml:"port"`
			TargetPort *portValue `yaml:"targetPort"`
		} `yaml:"ports"`
	} `yaml:"spec"`
}

// portValue is a Kubernetes IntOrString port: a number or a port name.
type portValue struct {
	Number int
	Name   string
}

func (p *portValue) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: port must be a number or a name", n.Line)
	}
	if n.Tag == "!!int" {
		return n.Decode(&p.Number)
	}
	p.Name = n.Value
	return nil
}

func (p portValue) String() string {
	if p.Name != "" {
		return strconv.Quote(p.Name)
	}
	return strconv.Itoa(p.Number)
}

// loadManifests parses every YAML file in deploy/kubernetes. It fails the
// test on a syntax error, an unknown kind, or a missing or repeated
// Deployment, Job or Service.
func loadManifests(t *testing.T) manifests {
	t.Helper()

	files, err := filepath.Glob(filepath.Join(manifestDir, "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests in %s: %v", manifestDir, err)
	}
	m := manifests{configMaps: map[string]map[string]string{}, secrets: map[string]map[string]string{}}
	count := map[string]int{}
	for _, file := range files {
		raw, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(raw))
		for {
			var doc yaml.Node
			err := dec.Decode(&doc)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s: %v", file, err)
			}
			if err := m.add(&doc); err != nil {
				t.Fatalf("%s: %v", file, err)
			}
			var head struct{ Kind string }
			_ = doc.Decode(&head)
			count[head.Kind]++
		}
	}

	for _, kind := range []string{"Deployment", "Job", "Service"} {
		if count[kind] != 1 {
			t.Fatalf("%s has %d objects of kind %s, want 1", manifestDir, count[kind], kind)
		}
	}
	return m
}

// add decodes one document into m according to its kind.
func (m *manifests) add(doc *yaml.Node) error {
	var head struct {
		Kind       string            `yaml:"kind"`
		Metadata   objectMeta        `yaml:"metadata"`
		Data       map[string]string `yaml:"data"`
		StringData map[string]string `yaml:"stringData"`
	}
	if err := doc.Decode(&head); err != nil {
		return err
	}

	switch head.Kind {
	case "Deployment":
		return doc.Decode(&m.deployment)
	case "Job":
		return doc.Decode(&m.job)
	case "Service":
		return doc.Decode(&m.service)
	case "ConfigMap":
		m.configMaps[head.Metadata.Name] = head.Data
		return nil
	case "Secret":
		values := maps.Clone(head.StringData)
		if values == nil {
			values = map[string]string{}
		}
		for k, v := range head.Data {
			b, err := base64.StdEncoding.DecodeString(v)
			if err != nil {
				return fmt.Errorf("secret %s key %s: %w", head.Metadata.Name, k, err)
			}
			values[k] = string(b)
		}
		m.secrets[head.Metadata.Name] = values
		return nil
	}
	return fmt.Errorf("unexpected kind %q: extend loadManifests to check it", head.Kind)
}

// container returns the container called name of w's pod template.
func (w workload) container(t *testing.T, name string) container {
	t.Helper()
	for _, c := range w.Spec.Template.Spec.Containers {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("%s has no container %q", w.Metadata.Name, name)
	return container{}
}

// env resolves the environment of c as Kubernetes does: envFrom sources
// in order, then env entries, each overriding earlier ones.
func (m manifests) env(t *testing.T, c container) map[string]string {
	t.Helper()

	env := map[string]string{}
	for _, from := range c.EnvFrom {
		var source map[string]string
		var ok bool
		switch {
		case from.ConfigMapRef != nil:
			source, ok = m.configMaps[from.ConfigMapRef.Name]
			if !ok {
				t.Fatalf("container %s: envFrom names ConfigMap %q, which no manifest defines", c.Name, from.ConfigMapRef.Name)
			}
		case from.SecretRef != nil:
			source, ok = m.secrets[from.SecretRef.Name]
			if !ok {
				t.Fatalf("container %s: envFrom names Secret %q, which no manifest defines", c.Name, from.SecretRef.Name)
			}
		default:
			t.Fatalf("container %s: envFrom entry names neither a ConfigMap nor a Secret", c.Name)
		}
		for k, v := range source {
			env[from.Prefix+k] = v
		}
	}

	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			env[e.Name] = e.Value
		case e.ValueFrom.ConfigMapKeyRef != nil:
			env[e.Name] = lookupKey(t, c.Name, "ConfigMap", m.configMaps, *e.ValueFrom.ConfigMapKeyRef)
		case e.ValueFrom.SecretKeyRef != nil:
			env[e.Name] = lookupKey(t, c.Name, "Secret", m.secrets, *e.ValueFrom.SecretKeyRef)
		default:
			t.Fatalf("container %s: variable %s has a valueFrom this test does not resolve", c.Name, e.Name)
		}
	}
	return env
}

func lookupKey(t *testing.T, containerName, kind string, objects map[string]map[string]string, ref keyRef) string {
	t.Helper()
	data, ok := objects[ref.Name]
	if !ok {
		t.Fatalf("container %s: %s %q is not defined by any manifest", containerName, kind, ref.Name)
	}
	v, ok := data[ref.Key]
	if !ok {
		t.Fatalf("container %s: %s %q has no key %q", containerName, kind, ref.Name, ref.Key)
	}
	return v
}

var envInUsage = regexp.MustCompile(`\(env ([A-Z0-9_]+)\)`)

// commandEnvNames returns the environment variables that "sidecar cmd"
// reads, taken from its -h output, where envFlags.bind names each
// flag's variable. Reading the help output covers every flag the command
// declares, wherever it is declared.
func commandEnvNames(t *testing.T, cmd string) map[string]bool {
	t.Helper()

	var help bytes.Buffer
	noEnv := func(string) string { return "" }
	err := run(t.Context(), []string{cmd, "-h"}, noEnv, io.Discard, &help)
	if want := exitError(0); !errors.Is(err, want) {
		t.Fatalf("sidecar %s -h = %v, want %v", cmd, err, want)
	}

	names := map[string]bool{}
	for _, m := range envInUsage.FindAllStringSubmatch(help.String(), -1) {
		names[m[1]] = true
	}
	if len(names) == 0 {
		t.Fatalf("sidecar %s -h names no environment variable:\n%s", cmd, help.String())
	}
	return names
}

// serveConfig parses env as "sidecar serve" does and validates the result.
func serveConfig(t *testing.T, env map[string]string) server.Config {
	t.Helper()

	cfg := server.Defaults()
	f := newEnvFlags("sidecar serve")
	serverFlags(f, &cfg)
	f.fs.SetOutput(io.Discard)
	getenv := func(name string) string { return env[name] }
	if err := f.parse(nil, getenv); err != nil {
		t.Fatalf("sidecar serve rejects the sidecar container's environment: %v", err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("sidecar serve rejects the sidecar container's settings: %v", err)
	}
	return cfg
}

// addrPort returns the numeric port of a listen address such as ":7070".
func addrPort(t *testing.T, variable, addr string) int {
	t.Helper()
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("%s=%q: %v", variable, addr, err)
	}
	n, err := strconv.Atoi(port)
	if err != nil {
		t.Fatalf("%s=%q: the port must be a number so that it can be compared with the container ports", variable, addr)
	}
	return n
}

// resolvePort returns the number of the container port that p names, or
// false when the pod has no such port.
func resolvePort(spec podSpec, p portValue) (int, bool) {
	for _, c := range spec.Containers {
		for _, cp := range c.Ports {
			if (p.Name != "" && cp.Name == p.Name) || (p.Name == "" && cp.ContainerPort == p.Number) {
				return cp.ContainerPort, true
			}
		}
	}
	return 0, false
}

func preStopSleep(c container) (int64, bool) {
	if c.Lifecycle.PreStop == nil || c.Lifecycle.PreStop.Sleep == nil {
		return 0, false
	}
	return c.Lifecycle.PreStop.Sleep.Seconds, true
}

func TestManifestSidecarEnvNames(t *testing.T) {
	m := loadManifests(t)
	known := commandEnvNames(t, "serve")

	env := m.env(t, m.deployment.container(t, sidecarContainer))
	for _, name := range slices.Sorted(maps.Keys(env)) {
		if !known[name] {
			t.Errorf("sidecar container sets %s, which sidecar serve does not read", name)
		}
	}
}

func TestManifestSidecarSettings(t *testing.T) {
	m := loadManifests(t)
	c := m.deployment.container(t, sidecarContainer)

	if len(c.Command) != 0 || !slices.Equal(c.Args, []string{"serve"}) {
		t.Errorf("sidecar container command %q args %q, want the image's entrypoint with args [serve]", c.Command, c.Args)
	}

	cfg := serveConfig(t, m.env(t, c))
	if cfg.Migrate {
		t.Error("sidecar container applies migrations at start; want SIDECAR_MIGRATE=false because the migration Job applies them")
	}
	if cfg.DatabaseURL == "" {
		t.Error("sidecar container has no DATABASE_URL")
	}
}

func TestManifestSidecarProbes(t *testing.T) {
	m := loadManifests(t)
	spec := m.deployment.Spec.Template.Spec
	c := m.deployment.container(t, sidecarContainer)
	cfg := serveConfig(t, m.env(t, c))
	mainPort := addrPort(t, "SIDECAR_ADDR", cfg.Addr)

	for _, p := range []struct {
		kind  string
		probe *probe
		path  string
	}{
		{"liveness", c.LivenessProbe, "/healthz"},
		{"readiness", c.ReadinessProbe, "/readyz"},
	} {
		if p.probe == nil || p.probe.HTTPGet == nil {
			t.Errorf("sidecar container has no HTTP %s probe", p.kind)
			continue
		}
		if got := p.probe.HTTPGet.Path; got != p.path {
			t.Errorf("%s probe path = %q, want %q", p.kind, got, p.path)
		}
		got, ok := resolvePort(spec, p.probe.HTTPGet.Port)
		if !ok {
			t.Errorf("%s probe port %s is not a container port", p.kind, p.probe.HTTPGet.Port)
			continue
		}
		if got != mainPort {
			t.Errorf("%s probe port = %d, want %d from SIDECAR_ADDR=%q", p.kind, got, mainPort, cfg.Addr)
		}
	}

	if _, ok := resolvePort(spec, portValue{Number: mainPort}); !ok {
		t.Errorf("no container port %d for SIDECAR_ADDR=%q", mainPort, cfg.Addr)
	}
}

func TestManifestMetricsPort(t *testing.T) {
	m := loadManifests(t)
	c := m.deployment.container(t, sidecarContainer)
	cfg := serveConfig(t, m.env(t, c))

	variable, addr := "SIDECAR_METRICS_ADDR", cfg.MetricsAddr
	if addr == "" {
		variable, addr = "SIDECAR_ADDR", cfg.Addr // /metrics is then served on the main address
	}
	want := addrPort(t, variable, addr)

	got, ok := resolvePort(m.deployment.Spec.Template.Spec, portValue{Name: "metrics"})
	if !ok {
		t.Fatal("sidecar container has no port named metrics")
	}
	if got != want {
		t.Errorf("metrics port = %d, want %d from %s=%q", got, want, variable, addr)
	}
}

func TestManifestServicePorts(t *testing.T) {
	m := loadManifests(t)
	spec := m.deployment.Spec.Template.Spec
	cfg := serveConfig(t, m.env(t, m.deployment.container(t, sidecarContainer)))
	mainPort := addrPort(t, "SIDECAR_ADDR", cfg.Addr)

	exposed := false
	for _, p := range m.service.Spec.Ports {
		target := portValue{Number: p.Port} // the default when targetPort is unset
		if p.TargetPort != nil {
			target = *p.TargetPort
		}
		got, ok := resolvePort(spec, target)
		if !ok {
			t.Errorf("service port %s targets %s, which no container declares", p.Name, target)
			continue
		}
		exposed = exposed || got == mainPort
	}
	if !exposed {
		t.Errorf("no service port targets the sidecar's port %d", mainPort)
	}
}

func TestManifestSelectors(t *testing.T) {
	m := loadManifests(t)
	selects := func(selector, labels map[string]string) bool {
		for k, v := range selector {
			if labels[k] != v {
				return false
			}
		}
		return len(selector) > 0
	}
	podLabels := m.deployment.Spec.Template.Metadata.Labels
	jobLabels := m.job.Spec.Template.Metadata.Labels

	if !selects(m.deployment.Spec.Selector.MatchLabels, podLabels) {
		t.Errorf("deployment selector %v does not match its pod labels %v", m.deployment.Spec.Selector.MatchLabels, podLabels)
	}
	if !selects(m.service.Spec.Selector, podLabels) {
		t.Errorf("service selector %v does not match the pod labels %v", m.service.Spec.Selector, podLabels)
	}
	if selects(m.service.Spec.Selector, jobLabels) || selects(m.deployment.Spec.Selector.MatchLabels, jobLabels) {
		t.Errorf("migration Job pod labels %v are selected by the Service or the Deployment", jobLabels)
	}
}

func TestManifestShutdownTiming(t *testing.T) {
	m := loadManifests(t)
	spec := m.deployment.Spec.Template.Spec
	c := m.deployment.container(t, sidecarContainer)
	cfg := serveConfig(t, m.env(t, c))

	if spec.TerminationGracePeriodSeconds == nil {
		t.Fatal("deployment does not set terminationGracePeriodSeconds")
	}
	grace := *spec.TerminationGracePeriodSeconds
	sleep, ok := preStopSleep(c)
	if !ok {
		t.Fatal("sidecar container has no preStop sleep action")
	}

	drain := int64(math.Ceil(cfg.DrainTimeout.Seconds()))
	if grace < sleep+drain {
		t.Errorf("terminationGracePeriodSeconds = %d, want at least preStop sleep %d + drain timeout %d (SIDECAR_DRAIN_TIMEOUT=%s)", grace, sleep, drain, cfg.DrainTimeout)
	}
	// The sidecar cuts a longer spread to half of the drain timeout, so a
	// longer setting would not take effect as written.
	if cfg.DrainSpread > cfg.DrainTimeout/2 {
		t.Errorf("SIDECAR_DRAIN_SPREAD = %s, want at most half of SIDECAR_DRAIN_TIMEOUT = %s", cfg.DrainSpread, cfg.DrainTimeout)
	}

	// A container still in its preStop hook when the grace period ends is
	// killed without SIGTERM. The application must outlast the drain,
	// because clients may make app.<name> calls until the sidecar exits.
	for _, other := range spec.Containers {
		s, ok := preStopSleep(other)
		if ok && s >= grace {
			t.Errorf("container %s preStop sleep = %d s, want less than terminationGracePeriodSeconds = %d", other.Name, s, grace)
		}
		if other.Name != sidecarContainer && s < sleep+drain {
			t.Errorf("container %s preStop sleep = %d s, want at least the sidecar's preStop sleep %d + drain timeout %d", other.Name, s, sleep, drain)
		}
	}
}

func TestManifestSecurityContexts(t *testing.T) {
	m := loadManifests(t)

	for _, w := range []workload{m.deployment, m.job} {
		pod := w.Spec.Template.Spec
		for _, c := range pod.Containers {
			name := w.Metadata.Name + "/" + c.Name
			sc, podSC := c.SecurityContext, pod.SecurityContext

			nonRoot := sc.RunAsNonRoot
			if nonRoot == nil {
				nonRoot = podSC.RunAsNonRoot
			}
			if nonRoot == nil || !*nonRoot {
				t.Errorf("%s: runAsNonRoot is not true", name)
			}
			user := sc.RunAsUser
			if user == nil {
				user = podSC.RunAsUser
			}
			if user != nil && *user == 0 {
				t.Errorf("%s: runAsUser = 0, want a non-root uid such as the image's 65532", name)
			}
			if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
				t.Errorf("%s: readOnlyRootFilesystem is not true", name)
			}
			if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
				t.Errorf("%s: allowPrivilegeEscalation is not false", name)
			}
			if !slices.Contains(sc.Capabilities.Drop, "ALL") {
				t.Errorf("%s: capabilities drop %q, want ALL", name, sc.Capabilities.Drop)
			}
			seccomp := sc.SeccompProfile.Type
			if seccomp == "" {
				seccomp = podSC.SeccompProfile.Type
			}
			if seccomp != "RuntimeDefault" {
				t.Errorf("%s: seccomp profile = %q, want RuntimeDefault", name, seccomp)
			}
		}
	}
}

func TestManifestResources(t *testing.T) {
	m := loadManifests(t)

	for _, w := range []workload{m.deployment, m.job} {
		for _, c := range w.Spec.Template.Spec.Containers {
			for _, r := range []string{"cpu", "memory"} {
				if c.Resources.Requests[r] == "" {
					t.Errorf("%s/%s: no %s request", w.Metadata.Name, c.Name, r)
				}
				if c.Resources.Limits[r] == "" {
					t.Errorf("%s/%s: no %s limit", w.Metadata.Name, c.Name, r)
				}
			}
		}
	}
}

func TestManifestMigrateJob(t *testing.T) {
	m := loadManifests(t)
	containers := m.job.Spec.Template.Spec.Containers
	if len(containers) != 1 {
		t.Fatalf("migration Job has %d containers, want 1", len(containers))
	}
	c := containers[0]

	if len(c.Command) != 0 || !slices.Equal(c.Args, []string{"migrate", "up"}) {
		t.Errorf("migration Job command %q args %q, want the image's entrypoint with args [migrate up]", c.Command, c.Args)
	}
	if want := m.deployment.container(t, sidecarContainer).Image; c.Image != want {
		t.Errorf("migration Job image = %q, want the sidecar container's %q, whose binary embeds the same migrations", c.Image, want)
	}
	if got := m.job.Spec.Template.Spec.RestartPolicy; got != "Never" && got != "OnFailure" {
		t.Errorf("migration Job restartPolicy = %q, want Never or OnFailure", got)
	}

	known := commandEnvNames(t, "migrate")
	env := m.env(t, c)
	for _, name := range slices.Sorted(maps.Keys(env)) {
		if !known[name] {
			t.Errorf("migration Job sets %s, which sidecar migrate does not read", name)
		}
	}
	if env["DATABASE_URL"] == "" {
		t.Error("migration Job has no DATABASE_URL")
	}
}

func TestManifestSecretPlaceholders(t *testing.T) {
	m := loadManifests(t)
	if len(m.secrets) == 0 {
		t.Fatal("no Secret in the manifests")
	}

	for name, data := range m.secrets {
		for k, v := range data {
			if !strings.Contains(v, "REPLACE_ME") {
				t.Errorf("secret %s key %s = %q, want a placeholder containing REPLACE_ME", name, k, v)
			}
		}
	}
}
