package appservice

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the service's Prometheus metrics. Labels come from small closed
// sets (event class, outcome, job kind); never user, room or event IDs.
type Metrics struct {
	Transactions   *prometheus.CounterVec
	Events         *prometheus.CounterVec
	TxnDuration    prometheus.Histogram
	InboxLag       prometheus.Gauge
	Dispatched     prometheus.Counter
	JobsByState    *prometheus.GaugeVec
	JobRuns        *prometheus.CounterVec
	AuditRecords   prometheus.Counter
	AuditFailures  prometheus.Counter
	LastDispatched prometheus.Gauge
	KeepAlives     prometheus.Counter
	Rooms          *prometheus.GaugeVec
	ExportDone     *prometheus.CounterVec
	ExportFailures *prometheus.CounterVec
	ExportLag      *prometheus.GaugeVec
	AuthFailures   *prometheus.CounterVec
	// RetentionHeld counts rooms' own retention changes held back because
	// they would have ended more messages at once than policy allows.
	RetentionHeld prometheus.Counter
	// JobsTampered counts jobs refused because their MAC did not match.
	JobsTampered prometheus.Counter
	// PushersWithContent is how many users have a pusher that is sent
	// whole events, not event IDs only (Synapse).
	PushersWithContent prometheus.Gauge
	// PagesSent, PageLatency and PageInbound are the pager bridge's, by
	// gateway (names from the config, a small closed set).
	PagesSent   *prometheus.CounterVec
	PageLatency *prometheus.HistogramVec
	PageInbound *prometheus.CounterVec
	// ArchiveItems and ArchiveMissing are the archive's: what it kept, by
	// kind, and the messages it could not read, by reason.
	ArchiveItems   *prometheus.CounterVec
	ArchiveMissing *prometheus.CounterVec
}

// Delivered, Failed and Lag make Metrics an audit.ExportStats. Exporter
// names come from the config, a small closed set.
func (m *Metrics) Delivered(name string, n int) { m.ExportDone.WithLabelValues(name).Add(float64(n)) }
func (m *Metrics) Failed(name string)           { m.ExportFailures.WithLabelValues(name).Inc() }
func (m *Metrics) Lag(name string, n int64)     { m.ExportLag.WithLabelValues(name).Set(float64(n)) }

func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Transactions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hipaa_transactions_total",
			Help: "Transactions pushed by the homeserver, by result (ok, duplicate, rejected, error).",
		}, []string{"result"}),
		Events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hipaa_events_total",
			Help: "Events received, by class and whether they were new or a re-delivery.",
		}, []string{"class", "delivery"}),
		TxnDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "hipaa_transaction_duration_seconds",
			Help:    "Time from a transaction's arrival to its acknowledgement, including the durable commit.",
			Buckets: []float64{.0005, .001, .002, .005, .01, .02, .05, .1, .25, .5, 1, 2.5, 5},
		}),
		InboxLag: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hipaa_inbox_lag_events",
			Help: "Events stored but not yet dispatched to policy.",
		}),
		Dispatched: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hipaa_inbox_dispatched_events_total",
			Help: "Events the dispatcher has processed.",
		}),
		JobsByState: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "hipaa_jobs",
			Help: "Durable jobs waiting to run (state pending) or given up (state failed); finished ones are counted by hipaa_job_runs_total.",
		}, []string{"state"}),
		JobRuns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hipaa_job_runs_total",
			Help: "Job attempts by kind and outcome: success, would (dry run), retry, unreachable (the homeserver did not answer; not counted as an attempt) or failure (given up).",
		}, []string{"kind", "outcome"}),
		AuditRecords: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hipaa_audit_records_total",
			Help: "Audit records appended by this process.",
		}),
		AuditFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hipaa_audit_write_failures_total",
			Help: "Failed audit appends; each made the work it described fail too.",
		}),
		LastDispatched: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hipaa_inbox_last_dispatch_timestamp_seconds",
			Help: "When the dispatcher last finished a batch.",
		}),
		KeepAlives: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hipaa_keepalive_sent_total",
			Help: "Keep-alive posts the bot made to keep the homeserver's delivery prompt.",
		}),
		PushersWithContent: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hipaa_users_with_content_pushers",
			Help: "Local users with a pusher whose push gateway is sent whole events (not event_id_only): their phones may show message text. Synapse only; -1 until the first check.",
		}),
		Rooms: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "hipaa_rooms",
			Help: "Known rooms by standing: known; needs_attention (a setting policy requires is not in force, or an action failed for good: what `matrix-hipaa rooms -problems` lists); problem (an action failed for good); unencrypted_required (policy wants encryption, room has none); bot_underpowered (bot lacks the power to fix settings itself: informational).",
		}, []string{"standing"}),
	}
	m.AuthFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "hipaa_auth_failures_total",
		Help: "Requests to the application service API refused for their credentials: missing (no token), malformed (not a Bearer token, or header and query disagree) or wrong (not the hs_token).",
	}, []string{"reason"})
	m.ExportDone = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "hipaa_audit_export_records_total",
		Help: "Audit records delivered by each exporter (a record sent again after an outage counts again).",
	}, []string{"exporter"})
	m.ExportFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "hipaa_audit_export_failures_total",
		Help: "Failed deliveries by each exporter; it retries with backoff and skips nothing.",
	}, []string{"exporter"})
	m.ExportLag = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "hipaa_audit_export_lag_records",
		Help: "Audit records not yet delivered by each exporter.",
	}, []string{"exporter"})
	m.RetentionHeld = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "hipaa_retention_changes_held_total",
		Help: "Rooms' own m.room.retention changes held for confirmation because they would end more waiting messages at once than retention_change_limit allows.",
	})
	m.JobsTampered = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "hipaa_jobs_tampered_total",
		Help: "Jobs refused because their MAC did not match their stored kind, payload or flags: queued or edited in the database outside the service.",
	})
	m.PagesSent = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "hipaa_pages_sent_total",
		Help: "Pages a gateway accepted, by gateway.",
	}, []string{"gateway"})
	m.PageLatency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "hipaa_page_latency_seconds",
		Help:    "Time from a page being queued (its message decided on) to the gateway accepting it, by gateway; retries after an outage included.",
		Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300},
	}, []string{"gateway"})
	m.PageInbound = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "hipaa_page_inbound_total",
		Help: "Statuses and replies from gateways, by gateway and kind (status, reply, duplicate, unknown: for no page of ours).",
	}, []string{"gateway", "kind"})
	m.PushersWithContent.Set(-1)
	m.ArchiveItems = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "hipaa_archive_items_total",
		Help: "Items the archive kept, by kind (message, redaction, member, file).",
	}, []string{"kind"})
	m.ArchiveMissing = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "hipaa_archive_missing_total",
		Help: "Messages of archived rooms the archive could not read, by reason (withheld, no-keys, gone, unreadable).",
	}, []string{"reason"})
	reg.MustRegister(m.ArchiveItems, m.ArchiveMissing, m.PagesSent, m.PageLatency, m.PageInbound, m.JobsTampered, m.PushersWithContent, m.RetentionHeld, m.AuthFailures, m.ExportDone, m.ExportFailures, m.ExportLag, m.Rooms, m.KeepAlives, m.Transactions, m.Events, m.TxnDuration, m.InboxLag, m.Dispatched,
		m.JobsByState, m.JobRuns, m.AuditRecords, m.AuditFailures, m.LastDispatched)
	return m
}
