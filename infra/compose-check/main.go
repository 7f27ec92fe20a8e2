// compose-check validates a docker-compose file the way `docker compose config`
// does, using the official compose-go loader (Compose Specification JSON schema
// + consistency checks such as depends_on pointing at unknown services), and
// prints a compact JSON summary of the services on stdout.
//
// Usage (from the repo root, which has no go.mod of its own):
//
//	"$(infra/compose-check/build.sh)" [-f FILE]   # cached binary in $MT_HOME/bin
//	go -C infra/compose-check run . [-f /abs/FILE] # -C makes relative -f paths relative to this dir
//
// Without -f the file is found like `docker compose` does: compose.yaml,
// compose.yml, docker-compose.yml or docker-compose.yaml in the current
// directory or the nearest parent (plus a matching *.override.* file).
// Exit 0 + JSON on stdout when valid; exit 1 + one-line error on stderr otherwise.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/sirupsen/logrus"
)

type service struct {
	DependsOn   map[string]string `json:"depends_on"`
	Healthcheck bool              `json:"healthcheck"`
	Image       string            `json:"image"`
	Build       bool              `json:"build"`
	Ports       []string          `json:"ports"`
}

// plainLog turns compose-go's logrus warnings (e.g. unset variables) into
// short "compose-check: warning: ..." lines on stderr.
type plainLog struct{}

func (plainLog) Format(e *logrus.Entry) ([]byte, error) {
	return []byte("compose-check: " + e.Level.String() + ": " + e.Message + "\n"), nil
}

func main() {
	logrus.SetFormatter(plainLog{})
	file := flag.String("f", "", "compose file to validate (default: docker compose discovery from cwd upwards)")
	flag.Parse()
	var files []string
	if *file != "" {
		files = []string{*file}
	}

	// Same pipeline as `docker compose config`: read the file, interpolate
	// against the OS env (+ .env next to the file, if any), then schema-validate,
	// normalize and run the consistency checks. Unset variables interpolate to
	// "" (compose-go logs a warning on stderr); `${VAR:?msg}` still fails.
	// All profiles are enabled ("*") so profiled services are validated too.
	opts, err := cli.NewProjectOptions(files,
		cli.WithName("minithreads"),
		cli.WithDefaultConfigPath, // only acts when no -f was given
		cli.WithOsEnv,
		cli.WithEnvFiles(), // locate the default .env next to the compose file
		cli.WithDotEnv,     // ...and load it
		cli.WithProfiles([]string{"*"}),
	)
	if err != nil {
		fail(err)
	}
	project, err := opts.LoadProject(context.Background())
	if err != nil {
		fail(err)
	}

	out := map[string]service{}
	for name, s := range project.Services {
		deps := map[string]string{}
		for dep, d := range s.DependsOn {
			deps[dep] = d.Condition // service_started | service_healthy | service_completed_successfully
		}
		ports := []string{}
		for _, p := range s.Ports {
			ports = append(ports, portString(p))
		}
		out[name] = service{
			DependsOn:   deps,
			Healthcheck: s.HealthCheck != nil && !s.HealthCheck.Disable,
			Image:       s.Image,
			Build:       s.Build != nil,
			Ports:       ports,
		}
	}
	if err := json.NewEncoder(os.Stdout).Encode(map[string]any{"services": out}); err != nil {
		fail(err)
	}
}

// portString renders a port back to short syntax: [host_ip:][published:]target[/proto].
func portString(p types.ServicePortConfig) string {
	s := fmt.Sprint(p.Target)
	if p.Published != "" {
		s = p.Published + ":" + s
	}
	if p.HostIP != "" {
		s = p.HostIP + ":" + s
	}
	if p.Protocol != "" && p.Protocol != "tcp" {
		s += "/" + p.Protocol
	}
	return s
}

// fail prints the error on a single line to stderr and exits 1.
func fail(err error) {
	fmt.Fprintln(os.Stderr, "compose-check: "+strings.Join(strings.Fields(err.Error()), " "))
	os.Exit(1)
}
