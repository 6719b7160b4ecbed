// Command dev runs the development stack: a real homeserver (Dendrite, or
// Synapse with -homeserver synapse) and matrix-hipaa on loopback, with an admin, a demo user and a management
// room. Start it with deploy/dev/start.sh; `start.sh adduser NAME` adds an
// account to a running stack.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/matrix-hipaa/matrix-hipaa/deploy/devstack"
)

type options struct {
	state, homeserver           string
	hsPort, asPort, metricsPort int
}

func main() {
	var o options
	flag.StringVar(&o.state, "state", ".dev", "folder for configs, databases and logs")
	flag.StringVar(&o.homeserver, "homeserver", "dendrite", "dendrite, or synapse (Debian sid's, in a root file system made once; needs root)")
	flag.IntVar(&o.hsPort, "hs-port", 8008, "homeserver port on 127.0.0.1")
	flag.IntVar(&o.asPort, "as-port", 29330, "matrix-hipaa port on 127.0.0.1")
	flag.IntVar(&o.metricsPort, "metrics-port", 29331, "metrics port on 127.0.0.1")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: start.sh [flags]           start the stack (Ctrl-C stops it)\n"+
			"       start.sh [flags] adduser NAME   add @NAME:localhost to the running stack\n"+
			"       start.sh [flags] build          build the homeserver only (first run), and say where it is\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	// A closed pipe (start.sh | tee log, then Ctrl-C) must not kill the
	// stack before it has stopped its children: writes then fail instead.
	signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)
	var err error
	switch flag.Arg(0) {
	case "":
		err = run(o, os.Stdout, os.Stderr)
	case "adduser":
		err = addUser(o, flag.Arg(1), os.Stdout)
	case "build":
		_, err = o.buildHomeserver(context.Background(), os.Stdout)
	default:
		flag.Usage()
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "dev stack:", err)
		os.Exit(1)
	}
}

// buildHomeserver builds (first run) or finds the homeserver's build:
// Options with it set.
func (o options) buildHomeserver(ctx context.Context, log io.Writer) (devstack.Options, error) {
	opts := devstack.Options{Homeserver: o.homeserver}
	var err error
	switch o.homeserver {
	case "dendrite":
		if opts.DendriteBin, err = devstack.BuildDendrite(ctx, log); err != nil {
			return opts, err
		}
		fmt.Fprintf(log, "Dendrite in %s\n", opts.DendriteBin)
		// What the example config recommends for Dendrite: prompt delivery.
		opts.KeepAlive, opts.PersistentJetStream = "2s", true
	case "synapse":
		var version string
		if opts.SynapseRoot, version, err = devstack.BuildSynapse(ctx, log); err != nil {
			return opts, err
		}
		fmt.Fprintf(log, "Synapse %s in %s\n", version, opts.SynapseRoot)
	default:
		return opts, fmt.Errorf("-homeserver %q: dendrite or synapse", o.homeserver)
	}
	return opts, nil
}

func (o options) prepare(ctx context.Context, build bool, log io.Writer) (*devstack.Stack, string, error) {
	root, err := devstack.RepoRoot()
	if err != nil {
		return nil, "", err
	}
	if !filepath.IsAbs(o.state) {
		o.state = filepath.Join(root, o.state)
	}
	opts, err := o.buildHomeserver(ctx, log)
	if err != nil {
		return nil, "", err
	}
	if o.homeserver == "synapse" {
		o.state = filepath.Join(o.state, "synapse") // its own accounts and keys
	}
	bin := filepath.Join(o.state, "bin", "matrix-hipaa")
	if build {
		fmt.Fprintln(log, "building matrix-hipaa…")
		if err := devstack.BuildService(ctx, root, bin, log); err != nil {
			return nil, "", err
		}
	}
	opts.StateDir, opts.ServiceBin = o.state, bin
	opts.HSPort, opts.ASPort, opts.MetricsPort = o.hsPort, o.asPort, o.metricsPort
	stack, err := devstack.Prepare(opts)
	return stack, bin, err
}

// run starts the stack and stops it, whatever ends it: a signal, a closed
// pipe, an error or a panic (the children also get SIGTERM from the kernel
// if the stack itself is killed).
func run(o options, stdout, stderr io.Writer) (err error) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	stack, bin, err := o.prepare(ctx, true, stderr)
	if err != nil {
		return err
	}
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic: %v", p)
		}
		stack.Stop()
	}()
	fmt.Fprintln(stderr, "starting", stack.HomeserverName(), "…")
	if err := stack.StartDendrite(ctx); err != nil {
		return err
	}
	dev, err := stack.SetUpDev(ctx)
	if err != nil {
		return err
	}
	if err := stack.StartService(ctx); err != nil {
		return err
	}
	cfg := stack.ServiceConfig
	fmt.Fprintf(stdout, `
matrix-hipaa dev stack is running (Ctrl-C stops it).

  Homeserver   %s   (%s, server name "localhost")
  matrix-hipaa http://127.0.0.1:%d   metrics http://127.0.0.1:%d/metrics
  State        %s

Log in from Element (desktop, or app.element.io pointed at a local server) or any
Matrix client with homeserver %s and one of:
    %s  password %s   (an administrator: admin.users)
    %s  password %s

The management room "matrix-hipaa management" (%s) is the admin's: log in as
%s, open it and send !help. Commands that change anything (!wipe, !verify,
!hold…) need the admin's verified session: in Element, set up secure backup
(Settings → Security) so the session is cross-signed.

More accounts:   %s adduser NAME
Audit trail:     %s audit export -config %s -format jsonl
                 %s audit verify -config %s
At a glance:     %s status -config %s
Rooms:           %s rooms -config %s
Logs:            %s and %s
`, stack.HSURL, stack.HomeserverName(), o.asPort, o.metricsPort, stack.Opts.StateDir, stack.HSURL,
		dev.Admin.ID, dev.Admin.Password, dev.Demo.ID, dev.Demo.Password, dev.ManagementRoom, dev.Admin.ID,
		startScript(), bin, cfg, bin, cfg, bin, cfg, bin, cfg, stack.ServiceLog, stack.DendriteLog)
	<-ctx.Done()
	fmt.Fprintln(stderr, "stopping…") // may fail on a closed pipe: the stop runs anyway
	return nil
}

// addUser registers an account on a running stack.
func addUser(o options, name string, stdout io.Writer) error {
	if name == "" {
		return errors.New("usage: start.sh adduser NAME")
	}
	ctx := context.Background()
	stack, _, err := o.prepare(ctx, false, io.Discard)
	if err != nil {
		return err
	}
	u, err := stack.AddUser(ctx, name)
	if err != nil {
		return fmt.Errorf("%w (is the stack running?)", err)
	}
	_, err = fmt.Fprintf(stdout, "%s  password %s\n", u.ID, u.Password)
	return err
}

func startScript() string {
	root, err := devstack.RepoRoot()
	if err != nil {
		return "deploy/dev/start.sh"
	}
	return filepath.Join(root, "deploy", "dev", "start.sh")
}
