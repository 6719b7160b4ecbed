// Command dev runs the development stack: a real Dendrite homeserver and
// matrix-hipaa on loopback, with an admin and a demo user. Start it with
// deploy/dev/start.sh.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/matrix-hipaa/matrix-hipaa/config"
	"github.com/matrix-hipaa/matrix-hipaa/deploy/devstack"
)

func main() {
	state := flag.String("state", ".dev", "folder for configs, databases and logs")
	hsPort := flag.Int("hs-port", 8008, "homeserver port on 127.0.0.1")
	asPort := flag.Int("as-port", 29330, "matrix-hipaa port on 127.0.0.1")
	metricsPort := flag.Int("metrics-port", 29331, "metrics port on 127.0.0.1")
	flag.Parse()
	if err := run(*state, *hsPort, *asPort, *metricsPort); err != nil {
		fmt.Fprintln(os.Stderr, "dev stack:", err)
		os.Exit(1)
	}
}

func run(state string, hsPort, asPort, metricsPort int) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root, err := devstack.RepoRoot()
	if err != nil {
		return err
	}
	if !filepath.IsAbs(state) {
		state = filepath.Join(root, state)
	}
	dendrite, err := devstack.BuildDendrite(ctx, os.Stderr)
	if err != nil {
		return err
	}
	bin := filepath.Join(state, "bin", "matrix-hipaa")
	fmt.Fprintln(os.Stderr, "building matrix-hipaa…")
	if err := devstack.BuildService(ctx, root, bin, os.Stderr); err != nil {
		return err
	}
	stack, err := devstack.Prepare(devstack.Options{
		StateDir: state, DendriteBin: dendrite, ServiceBin: bin,
		HSPort: hsPort, ASPort: asPort, MetricsPort: metricsPort,
		PersistentJetStream: true,
	})
	if err != nil {
		return err
	}
	defer stack.Stop()
	fmt.Fprintln(os.Stderr, "starting Dendrite", devstack.DendriteVersion, "…")
	if err := stack.StartDendrite(ctx); err != nil {
		return fmt.Errorf("%w (log: %s)", err, stack.DendriteLog)
	}
	if err := stack.StartService(ctx); err != nil {
		return err
	}
	users := [][2]string{{"admin", "true"}, {"demo", "false"}}
	var lines []string
	for _, u := range users {
		pwFile := filepath.Join(state, u[0]+".password")
		pw, err := os.ReadFile(pwFile)
		if err != nil {
			pw = []byte(config.RandomToken()[:20])
			if _, err := stack.CreateUser(ctx, u[0], string(pw), u[1] == "true"); err != nil {
				return err
			}
			if err := config.WriteFileAtomic(pwFile, pw, 0o600); err != nil {
				return err
			}
		}
		lines = append(lines, fmt.Sprintf("    @%s:localhost  password %s", u[0], strings.TrimSpace(string(pw))))
	}
	fmt.Printf(`
matrix-hipaa dev stack is running (Ctrl-C stops it).

  Homeserver   %s   (Dendrite %s, server name "localhost")
  matrix-hipaa http://127.0.0.1:%d   metrics http://127.0.0.1:%d/metrics
  State        %s

Log in from Element (desktop, or app.element.io pointed at a local server) or any
Matrix client with homeserver %s and one of:
%s

Audit trail:
  %s audit export -config %s -format jsonl
  %s audit verify -config %s
Logs: %s and %s
`, stack.HSURL, devstack.DendriteVersion, asPort, metricsPort, state, stack.HSURL,
		strings.Join(lines, "\n"), bin, stack.ServiceConfig, bin, stack.ServiceConfig, stack.ServiceLog, stack.DendriteLog)
	<-ctx.Done()
	fmt.Fprintln(os.Stderr, "stopping…")
	return nil
}
