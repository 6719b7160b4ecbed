// Package appservice is the running service: the application service HTTP
// API, the durable inbox, the dispatcher and the job runner.
package appservice

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	stdlog "log"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/bot"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/homeserver"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/matrix-hipaa/matrix-hipaa/config"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

// NewLogger builds the service logger from config.
func NewLogger(cfg config.Logging, w io.Writer) zerolog.Logger {
	level, err := zerolog.ParseLevel(cfg.Level)
	if err != nil {
		level = zerolog.InfoLevel
	}
	if cfg.Format == "pretty" {
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: time.RFC3339}
	}
	return zerolog.New(w).Level(level).With().Timestamp().Logger()
}

// OpenStore opens the configured database and the audit chain on it.
func OpenStore(ctx context.Context, cfg *config.Config, now Clock) (*store.DB, *audit.Chain, error) {
	db, err := openDB(ctx, cfg)
	if err != nil {
		return nil, nil, err
	}
	keys, err := audit.LoadKeys(KeyFiles(cfg))
	if err != nil {
		db.Close()
		return nil, nil, err
	}
	chain := audit.NewChain(keys, db, now)
	if err := signLegacyJobs(ctx, db); err != nil {
		db.Close()
		return nil, nil, fmt.Errorf("sign jobs queued before job MACs: %w", err)
	}
	return db, chain, nil
}

// KeyFiles are where cfg keeps each key.
func KeyFiles(cfg *config.Config) audit.KeyFiles {
	return audit.KeyFiles{Chain: cfg.Audit.KeyFile, Pseudonym: cfg.Keys.PseudonymFile,
		Job: cfg.Keys.JobFile, Pickle: cfg.Keys.BotPickleFile}
}

// OpenForVerify opens the database and a chain that holds only the chain
// key: enough to verify, export and record that it did, and nothing more
// (no pseudonyms, no jobs, no bot keys).
func OpenForVerify(ctx context.Context, cfg *config.Config, now Clock) (*store.DB, *audit.Chain, error) {
	keys, err := audit.LoadChainKey(cfg.Audit.KeyFile)
	if err != nil {
		return nil, nil, err
	}
	db, err := openDB(ctx, cfg)
	if err != nil {
		return nil, nil, err
	}
	return db, audit.NewChain(keys, db, now), nil
}

func openDB(ctx context.Context, cfg *config.Config) (*store.DB, error) {
	return store.Open(ctx, cfg.Database.Type, cfg.Database.URI, cfg.Database.MaxOpenConns)
}

// Service is the whole running application service.
type Service struct {
	Config     *config.Config
	DB         *store.DB
	Chain      *audit.Chain
	Metrics    *Metrics
	Registry   *prometheus.Registry
	Inbox      *Inbox
	Server     *Server
	Dispatcher *Dispatcher
	// Decider is the dispatcher's policy; features add their say on events
	// to it (Add).
	Decider    *PolicyDecider
	Runner     *Runner
	Policy     *PolicyHolder
	Bot        *bot.Bot
	HS         *homeserver.Client
	Checkpoint *audit.Checkpointer
	WipeCaps   WipeCaps
	Links      *Links
	Log        zerolog.Logger
	now        Clock
	exporters  []*audit.Exporter
	// loops are the features' background work, run beside the engine's
	// and joined with it; starts run once, in order, before the loops.
	loops, starts []func(context.Context)
	// recoverKick asks for a ping after a transaction was refused for a
	// gap (Synapse).
	recoverKick chan struct{}
	enrollers   []Enroller
	features    []string
}

// Loop adds f to what Run starts beside the engine's own work; f returns
// when its context ends, and Run waits for it before it writes service.stop.
// (Features' loops come through Add; this is for surfaces.)
func (s *Service) Loop(f func(context.Context)) { s.loops = append(s.loops, f) }

// Env is what the service gives each feature.
func (s *Service) Env() Env {
	return Env{Config: s.Config, DB: s.DB, Chain: s.Chain, Now: s.now, Log: s.Log, Metrics: s.Metrics,
		Policy: s.Policy.Current, Wake: s.Runner.Wake, HS: s.HS, Bot: s.Bot, Links: s.Links, Caps: s.WipeCaps,
		BotUser: s.Config.BotMXID()}
}

// New assembles a service from config. Callers register job handlers on
// s.Runner before Run.
func New(ctx context.Context, cfg *config.Config, log zerolog.Logger, now Clock) (*Service, error) {
	if !cfg.AppService.HSToken.Set() || !cfg.AppService.ASToken.Set() {
		return nil, errors.New("appservice.as_token and hs_token are empty: run generate-registration first")
	}
	db, chain, err := OpenStore(ctx, cfg, now)
	if err != nil {
		return nil, err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := NewMetrics(reg)
	s := &Service{Config: cfg, DB: db, Chain: chain, Metrics: m, Registry: reg, Log: log, now: now}
	signer, err := audit.LoadOrCreateSigningKey(cfg.Audit.SigningKeyFile)
	if err != nil {
		db.Close()
		return nil, err
	}
	s.Checkpoint = &audit.Checkpointer{Chain: chain, DB: db, Key: signer, File: cfg.Audit.CheckpointFile,
		Every: cfg.Audit.CheckpointEvery, Interval: cfg.Audit.CheckpointInterval.D()}
	s.Inbox = NewInbox(db, chain, m, cfg.BotMXID())
	s.Server = NewServer(s.Inbox, cfg.AppService.HSToken.Reveal(), cfg.AppService.MaxBodyBytes, m, log)
	if cfg.Homeserver.Software == "synapse" {
		s.Server.Gaps = NewTxnGaps()
		s.recoverKick = make(chan struct{}, 1)
		s.Server.Recover = func() {
			select {
			case s.recoverKick <- struct{}{}:
			default:
			}
		}
	}
	s.Runner = NewRunner(db, chain, m, log, now, RunnerOptions{
		Workers: cfg.Jobs.Workers, MaxAttempts: cfg.Jobs.MaxAttempts,
		Backoff: cfg.Jobs.Backoff.D(), MaxBackoff: cfg.Jobs.MaxBackoff.D(),
	})
	if s.Policy, err = NewPolicyHolder(ctx, cfg.Policy, db, chain, log); err != nil {
		db.Close()
		return nil, err
	}
	links, err := LoadLinks(ctx, db)
	if err != nil {
		return nil, fmt.Errorf("load confirmed room links: %w", err)
	}
	s.Links = links
	s.Decider = &PolicyDecider{Policy: s.Policy, Bot: cfg.BotMXID(), Keys: chain.Keys(), ManagementRoom: cfg.Admin.Room, Links: links}
	s.Dispatcher = NewDispatcher(db, chain, s.Decider, m, log, s.Runner.Wake)
	hs := homeserver.New(cfg.Homeserver.Address, cfg.AppService.ASToken.Reveal())
	s.HS = hs
	password, err := cfg.BotPassword()
	if err != nil {
		return nil, fmt.Errorf("appservice.bot_password_file: %w", err)
	}
	s.Bot = bot.New(bot.Options{
		Homeserver: cfg.Homeserver.Address, UserID: cfg.BotMXID(), ASToken: cfg.AppService.ASToken.Reveal(),
		DB: db, URI: cfg.Database.URI, PickleKey: chain.Keys().PickleKey(), Inviter: hs, Admin: cfg.Admin.IsAdmin, ReadRoom: cfg.Admin.Room,
		Password: password, Log: log,
		// Dendrite pushes no ephemeral events to application services:
		// read receipts come from the bot's own sync there.
		Receipts: func(ctx context.Context, rs []bot.ReadReceipt) {
			if cfg.Homeserver.Software == "synapse" {
				return // pushed with the transactions
			}
			out := make([]Receipt, 0, len(rs))
			for _, r := range rs {
				out = append(out, Receipt{RoomID: r.Room, UserID: r.User, EventID: r.EventID, Type: r.Type, Thread: r.Thread, TS: r.TS})
			}
			if err := s.Inbox.StoreReceipts(ctx, out, s.now()); err != nil {
				log.Warn().Str("error", SafeError(err)).Msg("could not store read receipts from the bot's sync")
			}
		},
	})
	hs.BotSession = s.Bot.AccessToken
	RegisterDiscovery(s.Runner, hs, s.Inbox)
	RegisterLinkVerification(s.Runner, hs, links, cfg.BotMXID(), func(ctx context.Context) error { return s.enrol(ctx, s.Policy.Current()) })
	s.WipeCaps = WipeCaps{AdminAPI: cfg.Homeserver.Software == "synapse", Admin: cfg.BotMXID()}
	if cfg.Homeserver.Software == "synapse" {
		s.WipeCaps.LastSeenGranularity = 2 * time.Minute
	}
	// A new policy first brings known rooms under it (Enrollers), then the
	// features' PolicyWatchers run, in the order the features were added.
	s.Policy.OnChange(func(ctx context.Context, _, p *policy.Policy) { s.enrolLogged(ctx, p) })
	if s.exporters, err = s.Exporters(); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

// enrolLogged runs the Enrollers, logging what fails.
func (s *Service) enrolLogged(ctx context.Context, p *policy.Policy) {
	if err := s.enrol(ctx, p); err != nil {
		s.Log.Error().Err(err).Msg("could not check known rooms against the policy")
	}
}

// listen opens appservice.listen, with TLS when a certificate is configured.
func (s *Service) listen() (net.Listener, error) {
	as := s.Config.AppService
	return Listen(as.Listen, as.TLSCertFile, as.TLSKeyFile, s.Log)
}

// Listen opens addr for HTTP, or HTTPS (TLS 1.2+) when certFile and keyFile
// are given; a renewed certificate in those files is served without a restart.
func Listen(addr, certFile, keyFile string, log zerolog.Logger) (net.Listener, error) {
	var certs *certFiles
	if certFile != "" {
		var err error
		if certs, err = newCertFiles(certFile, keyFile, log); err != nil {
			return nil, fmt.Errorf("TLS certificate: %w", err)
		}
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil || certs == nil {
		return ln, err
	}
	return tls.NewListener(ln, &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: certs.get}), nil
}

// Run serves until ctx ends. It writes service.start and service.stop audit
// records; if the start record cannot be written the service does not start.
func (s *Service) Run(ctx context.Context) error {
	defer s.DB.Close()
	defer s.DB.TruncateWAL() // last, just before the database closes
	if err := s.Chain.AppendTx(ctx, s.DB, &audit.Record{Type: audit.TypeServiceStart, Outcome: audit.OutcomeSuccess, Detail: fmt.Sprintf("schema-%d", store.LatestVersion())}); err != nil {
		return fmt.Errorf("cannot write the audit trail, refusing to start: %w", err)
	}
	ln, err := s.listen()
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: s.Server, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 2 * time.Minute, IdleTimeout: 2 * time.Minute,
		ErrorLog: stdlog.New(s.Log.With().Str("component", "http").Logger(), "", 0)}
	// Every goroutine the service starts is joined (servers, workers) before
	// service.stop is written and the database closed.
	var servers, workers sync.WaitGroup
	errc := make(chan error, 2)
	servers.Go(func() { errc <- srv.Serve(ln) })
	var msrv *http.Server
	if addr := s.Config.Metrics.Listen; addr != "" {
		mln, err := net.Listen("tcp", addr)
		if err != nil {
			srv.Close()
			return fmt.Errorf("metrics listener: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(s.Registry, promhttp.HandlerOpts{}))
		msrv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		servers.Go(func() { errc <- msrv.Serve(mln) })
	}
	s.enrolLogged(ctx, s.Policy.Current())
	workCtx, stopWork := context.WithCancel(context.Background())
	s.DB.StartCheckpointer(workCtx, 100*time.Millisecond, func(err error) {
		s.Log.Error().Err(err).Msg("WAL checkpoint failed; the WAL will grow until checkpoints succeed")
	})
	workers.Go(func() { s.Dispatcher.Run(workCtx, s.Inbox.Notify()) })
	workers.Go(func() { s.Runner.Run(workCtx) })
	workers.Go(func() { audit.RunExporters(workCtx, s.exporters) })
	workers.Go(func() {
		s.Checkpoint.Run(workCtx, func(err error) {
			s.Log.Error().Err(err).Msg("could not write an audit checkpoint")
		})
	})
	workers.Go(func() { s.Bot.Run(workCtx) })
	for _, start := range s.starts {
		start(ctx)
	}
	for _, loop := range s.loops {
		workers.Go(func() { loop(workCtx) })
	}
	workers.Go(func() { s.refreshGauges(workCtx, 5*time.Second) })
	workers.Go(func() { s.Policy.Watch(workCtx, 2*time.Second) })
	workers.Go(func() { RunPruner(workCtx, s.DB, s.Chain, s.Config.Jobs.KeepMetadata.D(), time.Hour, s.Log) })
	if every := s.Config.Homeserver.KeepAlive.D(); every > 0 {
		cli, err := mautrix.NewClient(s.Config.Homeserver.Address, id.UserID(s.Config.BotMXID()), s.Config.AppService.ASToken.Reveal())
		if err == nil {
			cli.SetAppServiceUserID = true
			ka := &KeepAlive{cli: cli, domain: s.Config.Homeserver.Domain, interval: every, lastSeen: &s.Inbox.lastSeen, log: s.Log,
				sent: s.Metrics.KeepAlives.Inc}
			workers.Go(func() { ka.Run(workCtx) })
		}
	}
	workers.Go(func() { s.pingHomeserver(workCtx) })
	if s.recoverKick != nil {
		// After a refused transaction (a skipped one, see TxnGaps), a ping
		// makes Synapse's recoverer retry at once instead of in 2 s.
		workers.Go(func() {
			for {
				select {
				case <-workCtx.Done():
					return
				case <-s.recoverKick:
					s.pingHomeserver(workCtx)
				}
			}
		})
	}
	if s.Config.Homeserver.Software == "synapse" {
		// Rooms that never sent the service an event are only found by
		// listing them; Synapse's admin API does.
		workers.Go(func() { s.discoverListedRoomsLoop(workCtx, time.Hour) })
	}
	s.Log.Info().Str("config", s.Config.Describe()).Msg("matrix-hipaa running")
	synapse := s.Config.Homeserver.Software == "synapse"
	s.Log.Info().Str("software", s.Config.Homeserver.Software).
		Bool("media_quarantine", synapse).Bool("history_purge", synapse && s.Config.Homeserver.PurgeHistory).
		Str("wipe_sign_out", s.WipeCaps.Describe()).
		Msg("homeserver capabilities in use")

	var runErr error
	select {
	case <-ctx.Done():
	case err := <-errc:
		if !errors.Is(err, http.ErrServerClosed) {
			runErr = err
		}
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	srv.Shutdown(shutdown)
	if msrv != nil {
		msrv.Shutdown(shutdown)
	}
	servers.Wait()
	stopWork()
	workers.Wait()
	if err := s.Chain.AppendTx(shutdown, s.DB, &audit.Record{Type: audit.TypeServiceStop, Outcome: audit.OutcomeSuccess}); err != nil {
		s.Log.Error().Err(err).Msg("could not audit service stop")
	}
	// The last word is signed, so the trail's end as the service left it is on record.
	if _, err := s.Checkpoint.Once(shutdown, true); err != nil {
		s.Log.Error().Err(err).Msg("could not write the final audit checkpoint")
	}
	s.Log.Info().Msg("matrix-hipaa stopped")
	return runErr
}

// pingHomeserver asks the homeserver to ping the service once it listens,
// so that a homeserver that backed off while the service was down (2 s,
// 4 s, … between retries) sends what is waiting now, not at its next retry.
// It tries for a minute; a homeserver without the ping API (Dendrite
// v0.13.8) answers 404 and is left to its own retries.
func (s *Service) pingHomeserver(ctx context.Context) {
	for try := 0; try < 30; try++ {
		rtt, err := s.HS.Ping(ctx, s.Config.BotMXID(), s.Config.AppService.ID, fmt.Sprintf("start-%d-%d", s.now().UnixMilli(), try))
		if err == nil {
			s.Log.Info().Dur("round_trip", rtt).Msg("the homeserver reaches the service")
			return
		}
		var httpErr mautrix.HTTPError
		noAPI := errors.As(err, &httpErr) && httpErr.Response != nil &&
			(httpErr.Response.StatusCode == http.StatusNotFound || httpErr.Response.StatusCode == http.StatusMethodNotAllowed)
		if noAPI || errors.Is(err, mautrix.MUnrecognized) || ctx.Err() != nil {
			s.Log.Debug().Str("error", SafeError(err)).Msg("the homeserver has no ping API; it sends when it next retries")
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(2 * time.Second):
		}
	}
	s.Log.Warn().Msg("the homeserver could not reach the service within a minute of starting (appservice.url?)")
}

// refreshGauges keeps the gauges that summarise stored state current.
func (s *Service) refreshGauges(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		// Pending and failed only, each an index range: done jobs pile up
		// by the million and counting them every few seconds costs a scan.
		for _, state := range []string{"pending", "failed"} {
			var n float64
			if err := s.DB.R.QueryRowContext(ctx, `SELECT COUNT(*) FROM job WHERE state = $1`, state).Scan(&n); err == nil {
				s.Metrics.JobsByState.WithLabelValues(state).Set(n)
			}
		}
		s.Dispatcher.updateLag(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
