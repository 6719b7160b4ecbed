// Command matrix-hipaa is a Matrix application service that enforces a
// hospital's HIPAA policy on an ordinary homeserver. See README.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/user"
	"sort"
	"strings"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/matrix-hipaa/matrix-hipaa/config"
	"github.com/matrix-hipaa/matrix-hipaa/config/strictyaml"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

const usage = `matrix-hipaa: HIPAA policy for a Matrix homeserver

Commands:
  example-config                         print the commented example config
  generate-registration -config FILE     write the homeserver registration
                        [-out FILE]      (fills in tokens on first use)
  run -config FILE                       run the service
  example-policy                         print the commented example policy
  config validate FILE                   check a config and the files it names (policy,
                                         roster, TLS, audit keys) before a restart
  policy validate FILE                   check a policy file (every error as file:line:col)
  policy explain -policy FILE -room ID [-alias A]... [-space ID]... [-claimed-alias A]... [-claimed-space ID]...
                                         which settings apply to a room, and why
  status -config FILE                    what the database says of the service: events,
                                         backlog, jobs, the audit chain and its exporters
  rooms -config FILE [-problems]         rooms the service knows: encryption, policy, the
                                         bot's power, and actions that failed for good
                                         (-problems: only rooms needing attention; exit 1 if any)
  wipe -config FILE -user ID -reason TEXT [-device ID] [-offboard [-deactivate]] [-redact phi|all|none] [-since T]
                                         sign the user out everywhere, redact their messages,
                                         remove them from their rooms (-offboard); the running
                                         service does it, this waits for the outcome
  wipe -config FILE -status N            wait for wipe N and show how it ended
  admin-token -name NAME                 a new admin API token for one person, and the
                                         admin.tokens entry (its hash) to add to the config
  admin-key list -config FILE            administrators' cross-signing master keys the bot
                                         pinned (management-room commands that change
                                         anything run only from devices they cross-signed)
  admin-key unpin -config FILE -user ID  forget a pin after the admin reset cross-signing
  keys rotate -config FILE -key job|pseudonym|archive
                                         replace a key (service stopped); the old one is
                                         kept beside it for the key vault (docs/keys.md;
                                         a retired archive key still opens what it sealed)
  devices -config FILE -user ID           the user's sessions: last seen, cross-signed or not
  roster list -config FILE               the verified clinician roster
  roster check FILE                      check a roster file (YAML or CSV; every error as file:line)
  roster verify -config FILE -user ID -npi N -role R [-department D] [-licence-expires DATE]
  roster revoke -config FILE -user ID -reason TEXT
  roster import -config FILE -fhir BUNDLE.json
                                         add FHIR R4 Practitioners (NPI, Matrix ID, qualification)
  hold -config FILE (-room ID | -user ID) -reason TEXT
                                         place a legal hold: their messages do not expire
  hold -config FILE -release N           release hold N (its messages expire as due)
  hold -config FILE -list                the holds standing
  archive export -config FILE (-room ID | -user ID | -hold N) [-since T] [-until T]
        -reason TEXT -out DIR            an eDiscovery package of archived rooms (JSON lines,
                                         attachments, HTML transcripts, manifest, SHA256SUMS)
  archive report -config FILE            per archived room: kept, and messages it could not
                                         read and why (exit 1 if any)
  audit verify -config FILE              check the audit chain and its signed checkpoints
        [-public-key K] [-checkpoints F]  (exit 0 intact)
  audit public-key -config FILE          print the checkpoint signing key's public half
  audit export -config FILE -format jsonl|syslog|fhir [-since T] [-until T]
        [-user ID|u_… ] [-room ID|r_…]   print audit records (only those about the user
                                         or room, matched by pseudonym, if given)
  audit pseudonym -config FILE (-user ID | -room ID)
                                         the pseudonym the trail knows them by (audited)
  compliance report -config FILE [-since T] [-format md|json|html] [-out FILE] [-offline]
                                         each HIPAA safeguard with the deployment's live
                                         evidence, and findings ranked (counts, never names)
  backup -config FILE (-out FILE | -dir DIR [-keep N])
                                         a consistent copy of the SQLite database, taken
                                         while the service runs, its audit chain checked
                                         (-dir: named by the time, the newest N kept)
  restore -config FILE -from COPY        put a backup copy in place (service stopped): the
                                         copy's chain is checked first, the replaced files
                                         are kept, and the restore is the next audit record
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// command is one CLI command: it prints what it reports to stdout and
// returns an error for run to turn into the exit code.
type command func(args []string, stdout, stderr io.Writer) error

// commands are the top-level commands; groups hold subcommands.
var (
	commands = map[string]command{
		"example-config":        func(_ []string, out, _ io.Writer) error { _, err := out.Write(config.Example()); return err },
		"example-policy":        func(_ []string, out, _ io.Writer) error { _, err := out.Write(policy.Example()); return err },
		"generate-registration": generateRegistration,
		"run":                   runService,
		"admin-token":           adminToken,
		"backup":                backupCommand,
		"restore":               restoreCommand,
		"status":                statusCommand,
		"rooms":                 listRooms,
		"hold":                  holdCommand,
		"wipe":                  wipeCommand,
		"devices":               devicesCommand,
		"roster":                rosterCommand,
		"admin-key":             adminKeyCommand,
		"keys":                  keysCommand,
	}
	groups = map[string]map[string]command{
		"policy":     {"validate": policyValidate, "explain": policyExplain},
		"config":     {"validate": configValidate},
		"audit":      {"verify": auditVerify, "export": auditExport, "public-key": auditPublicKey, "pseudonym": auditPseudonym},
		"archive":    {"export": archiveExport, "report": archiveReport},
		"compliance": {"report": complianceReport},
	}
)

// errFinding: the command found something and has said so (a broken chain,
// rooms needing attention, files that do not validate). Exit 1, nothing
// more printed.
var errFinding = errors.New("finding reported")

// run is the CLI. Exit codes: 0 ok; 1 a finding, or an error (printed once);
// 2 a usage mistake.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	if h := args[0]; h == "help" || h == "-h" || h == "-help" || h == "--help" {
		fmt.Fprint(stdout, usage)
		return 0
	}
	cmd, rest := commands[args[0]], args[1:]
	if group, ok := groups[args[0]]; ok {
		if len(args) < 2 || group[args[1]] == nil {
			fmt.Fprintf(stderr, "usage: matrix-hipaa %s %s …\n\n%s", args[0], strings.Join(sortedKeys(group), "|"), usage)
			return 2
		}
		cmd, rest = group[args[1]], args[2:]
	}
	if cmd == nil {
		fmt.Fprintf(stderr, "unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	return exitCode(cmd(rest, stdout, stderr), stderr)
}

// exitCode prints err once (as file:line:col lines for config and policy
// errors) and says how the process exits.
func exitCode(err error, stderr io.Writer) int {
	var usageErr errUsage
	var fileErrs strictyaml.Errors
	switch {
	case err == nil:
		return 0
	case errors.Is(err, errFinding):
		return 1
	case errors.As(err, &usageErr):
		fmt.Fprintln(stderr, err)
		return 2
	case errors.As(err, &fileErrs):
		fmt.Fprintln(stderr, err) // file:line:col: message, one per line
		return 1
	default:
		fmt.Fprintln(stderr, "matrix-hipaa:", err)
		return 1
	}
}

func sortedKeys(m map[string]command) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

type errUsage struct{ msg string }

func (e errUsage) Error() string { return e.msg }

func flags(name string, stderr io.Writer) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs, fs.String("config", "config.yaml", "path to config.yaml")
}

func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return errUsage{err.Error()}
	}
	if fs.NArg() > 0 {
		return errUsage{fmt.Sprintf("unexpected argument %q", fs.Arg(0))}
	}
	return nil
}

// operator names who ran a CLI command, for the audit record of a read.
func operator() string {
	if u, err := user.Current(); err == nil {
		return "os:" + u.Username
	}
	return fmt.Sprintf("os:uid-%d", os.Getuid())
}

// openData loads the config and opens the service's database and audit chain,
// for commands that work on them.
func openData(ctx context.Context, cfgPath string) (*config.Config, *store.DB, *audit.Chain, error) {
	cfg, err := config.Load(cfgPath)
	if err != nil {
		return nil, nil, nil, err
	}
	db, chain, err := appservice.OpenStore(ctx, cfg, time.Now)
	return cfg, db, chain, err
}

// recordCommand puts an administrator's read-only command in the audit
// trail (detail: the pseudonym of whom it was about, if anyone), its outcome
// that of err, and returns err (joined with any failure to record: an
// unrecorded read is not shown). Every CLI read is recorded through it.
func recordCommand(ctx context.Context, db *store.DB, chain *audit.Chain, action, detail string, count int64, err error) error {
	return appservice.RecordCommand(ctx, db, chain, &audit.Record{Actor: operator(), Action: action, Detail: detail, Count: count}, err)
}
