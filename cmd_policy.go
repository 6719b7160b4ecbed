package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/config"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
	"github.com/matrix-hipaa/matrix-hipaa/policy/roster"
)

func policyValidate(args []string, stdout, stderr io.Writer) error {
	if len(args) != 1 {
		return errUsage{"usage: matrix-hipaa policy validate FILE"}
	}
	p, err := policy.Load(args[0])
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: valid (version %d, %d room overrides, hash %s)\n", args[0], p.Version, len(p.Rooms), p.Hash)
	for _, w := range p.Warnings() {
		fmt.Fprintf(stderr, "%s: warning: %s\n", args[0], w)
	}
	return nil
}

type listFlag []string

func (l *listFlag) String() string { return fmt.Sprint(*l) }

func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func policyExplain(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("policy explain", flag.ContinueOnError)
	fs.SetOutput(stderr)
	file := fs.String("policy", "policy.yaml", "policy file")
	room := fs.String("room", "", "room ID")
	var aliases, spaces listFlag
	var claimedAliases, claimedSpaces listFlag
	fs.Var(&aliases, "alias", "an alias of the room, confirmed by the directory (repeatable)")
	fs.Var(&spaces, "space", "the ID of a space that lists the room (repeatable)")
	fs.Var(&claimedAliases, "claimed-alias", "an alias only the room's own state claims (repeatable)")
	fs.Var(&claimedSpaces, "claimed-space", "a parent space only the room's own state claims (repeatable)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *room == "" {
		return errUsage{"policy explain needs -room"}
	}
	p, err := policy.Load(*file)
	if err != nil {
		return err
	}
	e := p.For(policy.Room{ID: *room, Aliases: claimedAliases, Spaces: claimedSpaces, VerifiedAliases: aliases, VerifiedSpaces: spaces})
	fmt.Fprintf(stdout, "room %s under policy %s (hash %s):\n%s", *room, *file, p.Hash, e.Explain())
	return nil
}

// configValidate checks a config and every file it points at, as the service
// would at start, without opening the database: for an admin before a restart.
func configValidate(args []string, stdout, stderr io.Writer) error {
	if len(args) != 1 {
		return errUsage{"usage: matrix-hipaa config validate FILE"}
	}
	path := args[0]
	cfg, err := config.Load(path)
	if err != nil {
		return err
	}
	var problems []error
	pol, err := policy.Load(cfg.Policy)
	problems = append(problems, err)
	clinicians := -1
	if cfg.Roster != "" {
		file := cfg.Roster
		data, err := os.ReadFile(file)
		if err == nil {
			var list []roster.Clinician
			list, err = roster.Parse(file, data)
			clinicians = len(list)
		}
		problems = append(problems, err)
	}
	problems = append(problems, audit.CheckKeyFiles(appservice.KeyFiles(cfg), cfg.Audit.SigningKeyFile))
	if err := errors.Join(problems...); err != nil {
		fmt.Fprintln(stderr, err) // every file's problems, each as file:line:col
		return errFinding
	}
	fmt.Fprintf(stdout, "%s: valid (homeserver %s, %s; database %s; policy %s with %d room overrides, hash %s",
		path, cfg.Homeserver.Domain, cfg.Homeserver.Software, cfg.Database.Type, cfg.Policy, len(pol.Rooms), pol.Hash)
	if clinicians >= 0 {
		fmt.Fprintf(stdout, "; roster of %d clinicians", clinicians)
	}
	fmt.Fprintln(stdout, ")")
	for _, w := range cfg.Warnings() {
		fmt.Fprintf(stdout, "WARNING %s\n", w)
	}
	return nil
}
