// Command render is a small stand-in for `helm template`: it renders one
// chart (no subcharts) with Go's text/template plus sprig, as Helm does, and
// prints a multi-document YAML stream with `# Source:` comments.
//
// It implements the part of Helm the Kloak chart uses (see ../README.md):
// values.yaml + --values files + --set/--set-string overrides, the built-in
// objects .Values .Release .Chart .Template, sprig's functions, and Helm's
// include, required, toYaml, toJson, fromYaml and tpl. Schema validation of
// the merged values is done by check.sh (Python jsonschema) on the output of
// --dump-values, because the standard library has no JSON Schema validator.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	yamlv2 "gopkg.in/yaml.v2"
	yaml "gopkg.in/yaml.v3"
)

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "render: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	var valueFiles, sets, setStrings multiFlag
	chartDir := flag.String("chart", "chart/kloak", "chart directory")
	release := flag.String("release-name", "kloak", "release name (.Release.Name)")
	namespace := flag.String("namespace", "kloak-system", "release namespace (.Release.Namespace)")
	dumpValues := flag.Bool("dump-values", false, "print the merged values as JSON and exit (for schema validation)")
	flag.Var(&valueFiles, "values", "values file merged over values.yaml (repeatable, later wins)")
	flag.Var(&sets, "set", "KEY=VALUE override, typed like Helm's --set (repeatable, comma-separated)")
	flag.Var(&setStrings, "set-string", "KEY=VALUE override, always a string (repeatable)")
	flag.Parse()
	if flag.NArg() != 0 {
		return fmt.Errorf("unexpected arguments %q", flag.Args())
	}

	chartMeta, err := loadYAMLMap(filepath.Join(*chartDir, "Chart.yaml"))
	if err != nil {
		return err
	}
	values, err := loadYAMLMap(filepath.Join(*chartDir, "values.yaml"))
	if err != nil {
		return err
	}
	for _, file := range valueFiles {
		override, err := loadYAMLMap(file)
		if err != nil {
			return err
		}
		values = mergeMaps(values, override)
	}
	for _, set := range sets {
		if err := applySet(values, set, false); err != nil {
			return fmt.Errorf("--set %q: %w", set, err)
		}
	}
	for _, set := range setStrings {
		if err := applySet(values, set, true); err != nil {
			return fmt.Errorf("--set-string %q: %w", set, err)
		}
	}
	if *dumpValues {
		out, err := json.MarshalIndent(values, "", "  ")
		if err != nil {
			return err
		}
		fmt.Println(string(out))
		return nil
	}

	chartName, _ := chartMeta["name"].(string)
	if chartName == "" {
		return errors.New("Chart.yaml has no name")
	}
	chart := map[string]interface{}{}
	for key, value := range chartMeta {
		// Helm exposes Chart.yaml's fields capitalised: .Chart.AppVersion.
		chart[strings.ToUpper(key[:1])+key[1:]] = value
	}
	for _, key := range []string{"Version", "AppVersion"} {
		if v, ok := chart[key]; ok && v != nil {
			chart[key] = fmt.Sprint(v)
		}
	}
	top := map[string]interface{}{
		"Values": values,
		"Chart":  chart,
		"Release": map[string]interface{}{
			"Name":      *release,
			"Namespace": *namespace,
			"Service":   "Helm",
			"IsInstall": true,
			"IsUpgrade": false,
			"Revision":  1,
		},
	}
	docs, err := renderChart(*chartDir, chartName, top)
	if err != nil {
		return err
	}
	var out bytes.Buffer
	for _, doc := range docs {
		fmt.Fprintf(&out, "---\n# Source: %s\n%s\n", doc.source, doc.content)
	}
	_, err = os.Stdout.Write(out.Bytes())
	return err
}

// loadYAMLMap reads a YAML file whose top level is a mapping (empty: {}).
func loadYAMLMap(path string) (map[string]interface{}, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var parsed interface{}
	if err := yaml.Unmarshal(data, &parsed); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if parsed == nil {
		return map[string]interface{}{}, nil
	}
	m, ok := normalize(parsed).(map[string]interface{})
	if !ok {
		return nil, fmt.Errorf("%s: the top level is not a mapping", path)
	}
	return m, nil
}

// normalize turns every mapping into map[string]interface{} (what Helm's
// JSON-based loader produces) so templates and toYaml see one shape.
func normalize(v interface{}) interface{} {
	switch t := v.(type) {
	case map[string]interface{}:
		for k, x := range t {
			t[k] = normalize(x)
		}
		return t
	case map[interface{}]interface{}:
		m := make(map[string]interface{}, len(t))
		for k, x := range t {
			m[fmt.Sprint(k)] = normalize(x)
		}
		return m
	case []interface{}:
		for i, x := range t {
			t[i] = normalize(x)
		}
		return t
	default:
		return v
	}
}

// mergeMaps merges override into base like Helm: maps merge recursively,
// anything else replaces, and null deletes the key.
func mergeMaps(base, override map[string]interface{}) map[string]interface{} {
	for key, value := range override {
		if value == nil {
			delete(base, key)
			continue
		}
		if sub, ok := value.(map[string]interface{}); ok {
			if existing, ok := base[key].(map[string]interface{}); ok {
				base[key] = mergeMaps(existing, sub)
				continue
			}
		}
		base[key] = value
	}
	return base
}

// applySet applies one --set argument: a.b.c=v[,x.y=w]. Values are typed
// (true/false/null/integers) unless asString; {a,b} is a list. A key segment
// may contain an escaped dot (\.). List indexes (a[0]) are not supported.
func applySet(values map[string]interface{}, arg string, asString bool) error {
	for _, assignment := range splitTopLevel(arg, ',') {
		eq := strings.IndexByte(assignment, '=')
		if eq <= 0 {
			return fmt.Errorf("%q is not KEY=VALUE", assignment)
		}
		path := splitKey(assignment[:eq])
		raw := assignment[eq+1:]
		var value interface{}
		if !asString && strings.HasPrefix(raw, "{") && strings.HasSuffix(raw, "}") {
			list := []interface{}{}
			if inner := raw[1 : len(raw)-1]; inner != "" {
				for _, item := range strings.Split(inner, ",") {
					list = append(list, typed(item))
				}
			}
			value = list
		} else if asString {
			value = raw
		} else {
			value = typed(raw)
		}
		node := values
		for i, key := range path {
			if strings.ContainsAny(key, "[]") {
				return fmt.Errorf("list indexes are not supported (%q)", key)
			}
			if i == len(path)-1 {
				if value == nil {
					delete(node, key)
				} else {
					node[key] = value
				}
				break
			}
			next, ok := node[key].(map[string]interface{})
			if !ok {
				next = map[string]interface{}{}
				node[key] = next
			}
			node = next
		}
	}
	return nil
}

func splitTopLevel(s string, sep byte) []string {
	var parts []string
	depth, start := 0, 0
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '{':
			depth++
		case '}':
			depth--
		case '\\':
			i++
		case sep:
			if depth == 0 {
				parts = append(parts, s[start:i])
				start = i + 1
			}
		}
	}
	return append(parts, s[start:])
}

func splitKey(key string) []string {
	var parts []string
	var cur strings.Builder
	for i := 0; i < len(key); i++ {
		if key[i] == '\\' && i+1 < len(key) {
			i++
			cur.WriteByte(key[i])
			continue
		}
		if key[i] == '.' {
			parts = append(parts, cur.String())
			cur.Reset()
			continue
		}
		cur.WriteByte(key[i])
	}
	return append(parts, cur.String())
}

var intPattern = regexp.MustCompile(`^[-+]?(0|[1-9][0-9]*)$`)

func typed(raw string) interface{} {
	switch raw {
	case "true":
		return true
	case "false":
		return false
	case "null":
		return nil
	}
	if intPattern.MatchString(raw) {
		if n, err := strconv.ParseInt(raw, 10, 64); err == nil {
			return n
		}
	}
	return raw
}

type document struct {
	source  string
	content string
	kind    string
	hook    bool
	order   int
}

// Helm's install order for the kinds this chart (and most charts) use;
// other kinds follow, then hooks, as `helm template` prints them.
var installOrder = []string{
	"Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange", "PodSecurityPolicy",
	"PodDisruptionBudget", "ServiceAccount", "Secret", "SecretList", "ConfigMap",
	"StorageClass", "PersistentVolume", "PersistentVolumeClaim", "CustomResourceDefinition",
	"ClusterRole", "ClusterRoleList", "ClusterRoleBinding", "ClusterRoleBindingList",
	"Role", "RoleList", "RoleBinding", "RoleBindingList", "Service", "DaemonSet", "Pod",
	"ReplicationController", "ReplicaSet", "Deployment", "HorizontalPodAutoscaler",
	"StatefulSet", "Job", "CronJob", "IngressClass", "Ingress", "APIService",
	"MutatingWebhookConfiguration", "ValidatingWebhookConfiguration",
}

func renderChart(chartDir, chartName string, top map[string]interface{}) ([]document, error) {
	templatesDir := filepath.Join(chartDir, "templates")
	entries, err := os.ReadDir(templatesDir)
	if err != nil {
		return nil, err
	}
	root := template.New("chart").Option("missingkey=zero")
	funcs := funcMap(root)
	root.Funcs(funcs)
	var names []string
	for _, entry := range entries {
		if entry.IsDir() {
			continue // nested template folders are not used by this chart
		}
		name := chartName + "/templates/" + entry.Name()
		data, err := os.ReadFile(filepath.Join(templatesDir, entry.Name()))
		if err != nil {
			return nil, err
		}
		if _, err := root.New(name).Parse(string(data)); err != nil {
			return nil, err
		}
		names = append(names, name)
	}
	sort.Strings(names)

	var docs []document
	for _, name := range names {
		base := filepath.Base(name)
		if strings.HasPrefix(base, "_") || base == "NOTES.txt" {
			continue
		}
		if !strings.HasSuffix(base, ".yaml") && !strings.HasSuffix(base, ".yml") {
			continue
		}
		scope := copyMap(top)
		scope["Template"] = map[string]interface{}{
			"Name":     name,
			"BasePath": chartName + "/templates",
		}
		var buf bytes.Buffer
		if err := root.ExecuteTemplate(&buf, name, scope); err != nil {
			return nil, err
		}
		rendered := strings.ReplaceAll(buf.String(), "<no value>", "")
		for _, part := range splitDocuments(rendered) {
			content := strings.TrimSpace(part)
			if content == "" {
				continue
			}
			var parsed map[string]interface{}
			if err := yaml.Unmarshal([]byte(content), &parsed); err != nil {
				return nil, fmt.Errorf("%s renders invalid YAML: %w\n%s", name, err, content)
			}
			if parsed == nil {
				continue // only comments
			}
			kind, _ := parsed["kind"].(string)
			if kind == "" {
				return nil, fmt.Errorf("%s renders a document without kind:\n%s", name, content)
			}
			hook := false
			if meta, ok := parsed["metadata"].(map[string]interface{}); ok {
				if ann, ok := meta["annotations"].(map[string]interface{}); ok {
					_, hook = ann["helm.sh/hook"]
				}
			}
			docs = append(docs, document{source: name, content: content, kind: kind, hook: hook, order: kindOrder(kind)})
		}
	}
	sort.SliceStable(docs, func(i, j int) bool {
		a, b := docs[i], docs[j]
		if a.hook != b.hook {
			return !a.hook
		}
		if a.hook {
			return false // hooks keep file order
		}
		if a.order != b.order {
			return a.order < b.order
		}
		if a.order == len(installOrder) {
			return a.kind < b.kind
		}
		return false
	})
	return docs, nil
}

func kindOrder(kind string) int {
	for i, k := range installOrder {
		if k == kind {
			return i
		}
	}
	return len(installOrder)
}

var separator = regexp.MustCompile(`(?m)^---[ \t]*$`)

func splitDocuments(s string) []string {
	return separator.Split(s, -1)
}

func copyMap(m map[string]interface{}) map[string]interface{} {
	out := make(map[string]interface{}, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func funcMap(root *template.Template) template.FuncMap {
	funcs := sprig.TxtFuncMap()
	// Helm removes these: a chart must not read the renderer's environment.
	delete(funcs, "env")
	delete(funcs, "expandenv")
	includeDepth := 0
	funcs["include"] = func(name string, data interface{}) (string, error) {
		includeDepth++
		defer func() { includeDepth-- }()
		if includeDepth > 100 {
			return "", fmt.Errorf("include %q: recursion too deep", name)
		}
		var buf bytes.Buffer
		if err := root.ExecuteTemplate(&buf, name, data); err != nil {
			return "", err
		}
		return buf.String(), nil
	}
	funcs["tpl"] = func(text string, data interface{}) (string, error) {
		t, err := root.Clone()
		if err != nil {
			return "", err
		}
		t, err = t.New("tpl").Parse(text)
		if err != nil {
			return "", err
		}
		var buf bytes.Buffer
		if err := t.Execute(&buf, data); err != nil {
			return "", err
		}
		return strings.ReplaceAll(buf.String(), "<no value>", ""), nil
	}
	funcs["required"] = func(message string, value interface{}) (interface{}, error) {
		if value == nil {
			return nil, errors.New(message)
		}
		if s, ok := value.(string); ok && s == "" {
			return nil, errors.New(message)
		}
		return value, nil
	}
	funcs["toYaml"] = func(v interface{}) string {
		data, err := yamlv2.Marshal(forYAML(v))
		if err != nil {
			return "" // Helm's toYaml also swallows errors
		}
		return strings.TrimSuffix(string(data), "\n")
	}
	funcs["toJson"] = func(v interface{}) string {
		data, err := json.Marshal(v)
		if err != nil {
			return ""
		}
		return string(data)
	}
	funcs["fromYaml"] = func(s string) map[string]interface{} {
		var m interface{}
		if err := yaml.Unmarshal([]byte(s), &m); err != nil {
			return map[string]interface{}{"Error": err.Error()}
		}
		out, _ := normalize(m).(map[string]interface{})
		return out
	}
	return funcs
}

// forYAML reshapes a value the way Helm's toYaml does (it goes through
// JSON): struct-free maps with string keys, sorted by yaml.v2.
func forYAML(v interface{}) interface{} {
	data, err := json.Marshal(v)
	if err != nil {
		return v
	}
	var out interface{}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := dec.Decode(&out); err != nil {
		return v
	}
	return numbers(out)
}

func numbers(v interface{}) interface{} {
	switch t := v.(type) {
	case map[string]interface{}:
		for k, x := range t {
			t[k] = numbers(x)
		}
		return t
	case []interface{}:
		for i, x := range t {
			t[i] = numbers(x)
		}
		return t
	case json.Number:
		if n, err := t.Int64(); err == nil {
			return n
		}
		if f, err := t.Float64(); err == nil {
			return f
		}
		return t.String()
	default:
		return v
	}
}

func init() {
	// Long strings stay on one line (as sigs.k8s.io/yaml, which Helm uses, does).
	yamlv2.FutureLineWrap()
}
