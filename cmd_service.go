package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/admin"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/assembly"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/sessions"
	"github.com/matrix-hipaa/matrix-hipaa/config"
	"github.com/rs/zerolog"
	"gopkg.in/yaml.v3"
)

func generateRegistration(args []string, stdout, stderr io.Writer) error {
	fs, cfgPath := flags("generate-registration", stderr)
	out := fs.String("out", "", "write the registration here (default: stdout)")
	if err := parse(fs, args); err != nil {
		return err
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		return err
	}
	if w := cfg.Warnings(); len(w) > 0 {
		// The registration's user namespace is made from the domain.
		return fmt.Errorf("%w\nedit these first: the registration's user namespace is made from them", w)
	}
	if _, err := cfg.EnsureTokens(); err != nil {
		return fmt.Errorf("write tokens into %s: %w", *cfgPath, err)
	}
	data, err := yaml.Marshal(cfg.Registration())
	if err != nil {
		return err
	}
	if *out == "" {
		_, err = stdout.Write(data)
		return err
	}
	return config.WriteFileAtomic(*out, data, 0o600)
}

func runService(args []string, stdout, stderr io.Writer) error {
	fs, cfgPath := flags("run", stderr)
	if err := parse(fs, args); err != nil {
		return err
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		return err
	}
	log := appservice.NewLogger(cfg.Logging, stderr)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return serve(ctx, cfg, log)
}

// serve assembles the service (the engine, its features and the admin
// surfaces) and runs it until ctx ends.
func serve(ctx context.Context, cfg *config.Config, log zerolog.Logger) error {
	svc, err := appservice.New(ctx, cfg, log, time.Now)
	if err != nil {
		return err
	}
	if err := assembly.AddFeatures(svc); err != nil {
		return err
	}
	if room := cfg.Admin.Room; room != "" {
		(&admin.Room{DB: svc.DB, Chain: svc.Chain, Bot: svc.Bot, HS: svc.HS, IsAdmin: cfg.Admin.IsAdmin, SingleDevice: svc.WipeCaps.AdminAPI, ManagementRoom: room,
			Guard: sessions.WipeGuard{Bot: cfg.BotMXID(), Domain: cfg.Homeserver.Domain, Admin: cfg.Admin.IsAdmin}}).Register(svc.Runner)
		svc.Loop(func(ctx context.Context) {
			// A seat in the management room, invited by an admin if need be.
			select {
			case <-svc.Bot.Ready():
			case <-ctx.Done():
				return
			}
			if _, err := svc.Bot.EnsureJoined(ctx, room, cfg.Admin.Users[0]); err != nil && ctx.Err() == nil {
				log.Warn().Str("error", appservice.SafeError(err)).Msg("the bot could not join the management room (admin.room); invite it there")
			}
		})
	}
	if addr := cfg.Admin.Listen; addr != "" {
		ln, err := appservice.Listen(addr, cfg.Admin.TLSCertFile, cfg.Admin.TLSKeyFile, log.With().Str("component", "admin-api").Logger())
		if err != nil {
			return fmt.Errorf("admin listener: %w", err)
		}
		// Timeouts: a slow or stalled client cannot hold connections open.
		srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, WriteTimeout: time.Minute, IdleTimeout: 2 * time.Minute,
			Handler: &admin.Server{DB: svc.DB, Chain: svc.Chain, Policy: svc.Policy.Current, Token: cfg.Admin.Token.Reveal(), People: adminPeople(cfg),
				Guard: sessions.WipeGuard{Bot: cfg.BotMXID(), Domain: cfg.Homeserver.Domain, Admin: cfg.Admin.IsAdmin},
				Refused: func(reason string) {
					svc.Metrics.AuthFailures.WithLabelValues(reason).Inc()
					log.Warn().Str("reason", reason).Msg("admin API request refused for its credentials")
				}}}
		// Joined with the service's own work: stopped, and waited for,
		// before the service writes service.stop and closes its database.
		svc.Loop(func(ctx context.Context) {
			served := make(chan struct{})
			go func() {
				defer close(served)
				srv.Serve(ln)
			}()
			<-ctx.Done()
			shut, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			srv.Shutdown(shut)
			<-served
		})
	}
	return svc.Run(ctx)
}

// adminPeople maps each person's admin token hash to their name.
func adminPeople(cfg *config.Config) map[string]string {
	m := make(map[string]string, len(cfg.Admin.Tokens))
	for _, t := range cfg.Admin.Tokens {
		m[t.SHA256] = t.Name
	}
	return m
}

// adminToken makes a new admin API token for one person: the token, to
// give them, and the config entry with its hash. The config never holds
// the token, so a copy of it does not let anyone in.
func adminToken(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("admin-token", flag.ContinueOnError)
	fs.SetOutput(stderr)
	name := fs.String("name", "", "whose token (recorded as admin-api:NAME for every request made with it)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *name == "" {
		return errUsage{"admin-token needs -name"}
	}
	tok := config.RandomToken()
	sum := sha256.Sum256([]byte(tok))
	fmt.Fprintf(stdout, "token for %s (give it to them; it is not stored anywhere):\n  %s\n\nadd to config.yaml under admin.tokens, then restart:\n  - name: %q\n    sha256: %s\n",
		*name, tok, *name, hex.EncodeToString(sum[:]))
	return nil
}
