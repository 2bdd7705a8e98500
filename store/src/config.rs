//! Command-line configuration, with etcd's flag names and defaults. Every flag can also be
//! set through `LODESTONE_<FLAG_IN_UPPER_SNAKE>` (e.g. `LODESTONE_DATA_DIR`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::net::tls;
use sha2::{Digest, Sha256};

/// `lodestone`: a strongly consistent key-value store speaking the etcd v3 API.
#[derive(Debug, Clone, Parser)]
#[command(name = "lodestone", version, about)]
pub struct Config {
    /// Human-readable name for this member.
    #[arg(long, env = "LODESTONE_NAME", default_value = "default")]
    pub name: String,

    /// Path to the data directory [default: ./<name>.lodestone].
    #[arg(long, env = "LODESTONE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Path to the dedicated write-ahead log directory [default: <data-dir>/member/wal].
    #[arg(long, env = "LODESTONE_WAL_DIR")]
    pub wal_dir: Option<PathBuf>,

    /// List of URLs to listen on for client traffic.
    #[arg(
        long,
        env = "LODESTONE_LISTEN_CLIENT_URLS",
        default_value = "http://127.0.0.1:2379",
        value_delimiter = ','
    )]
    pub listen_client_urls: Vec<String>,

    /// List of this member's client URLs to advertise to the rest of the cluster.
    #[arg(
        long,
        env = "LODESTONE_ADVERTISE_CLIENT_URLS",
        default_value = "http://127.0.0.1:2379",
        value_delimiter = ','
    )]
    pub advertise_client_urls: Vec<String>,

    /// List of URLs to listen on for peer traffic.
    #[arg(
        long,
        env = "LODESTONE_LISTEN_PEER_URLS",
        default_value = "http://127.0.0.1:2380",
        value_delimiter = ','
    )]
    pub listen_peer_urls: Vec<String>,

    /// List of this member's peer URLs to advertise to the rest of the cluster.
    #[arg(
        long,
        env = "LODESTONE_INITIAL_ADVERTISE_PEER_URLS",
        default_value = "http://127.0.0.1:2380",
        value_delimiter = ','
    )]
    pub initial_advertise_peer_urls: Vec<String>,

    /// Initial cluster configuration for bootstrapping, `name=peerURL,...`
    /// [default: <name>=<initial-advertise-peer-urls>].
    #[arg(long, env = "LODESTONE_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,

    /// Initial cluster state ('new' or 'existing').
    #[arg(long, env = "LODESTONE_INITIAL_CLUSTER_STATE", value_enum, default_value_t = ClusterState::New)]
    pub initial_cluster_state: ClusterState,

    /// Initial cluster token for the cluster during bootstrap.
    #[arg(long, env = "LODESTONE_INITIAL_CLUSTER_TOKEN", default_value = "etcd-cluster")]
    pub initial_cluster_token: String,

    /// Number of committed transactions to trigger a snapshot to disk.
    #[arg(long, env = "LODESTONE_SNAPSHOT_COUNT", default_value_t = 100_000)]
    pub snapshot_count: u64,

    /// Number of entries kept after a snapshot so slow followers catch up from the log.
    #[arg(
        long,
        env = "LODESTONE_EXPERIMENTAL_SNAPSHOT_CATCHUP_ENTRIES",
        default_value_t = 5_000
    )]
    pub experimental_snapshot_catchup_entries: u64,

    /// Time (in milliseconds) of a heartbeat interval.
    #[arg(long, env = "LODESTONE_HEARTBEAT_INTERVAL", default_value_t = 100)]
    pub heartbeat_interval: u64,

    /// Time (in milliseconds) for an election to timeout.
    #[arg(long, env = "LODESTONE_ELECTION_TIMEOUT", default_value_t = 1000)]
    pub election_timeout: u64,

    /// Raise alarms when backend size exceeds the given quota (0 defaults to 2 GiB).
    #[arg(long, env = "LODESTONE_QUOTA_BACKEND_BYTES", default_value_t = 0)]
    pub quota_backend_bytes: i64,

    /// Maximum client request size in bytes the server will accept.
    #[arg(long, env = "LODESTONE_MAX_REQUEST_BYTES", default_value_t = 1_572_864)]
    pub max_request_bytes: usize,

    /// Maximum number of operations permitted in a transaction.
    #[arg(long, env = "LODESTONE_MAX_TXN_OPS", default_value_t = 128)]
    pub max_txn_ops: usize,

    /// Interval of periodic watch progress notifications (Go duration, e.g. `10m`, `500ms`).
    #[arg(
        long,
        env = "LODESTONE_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL",
        default_value = "10m",
        value_parser = parse_duration
    )]
    pub experimental_watch_progress_notify_interval: Duration,

    /// How often the leader compares HashKV across members and raises a CORRUPT alarm on a
    /// mismatch (Go duration; 0 disables, as in etcd).
    #[arg(
        long,
        env = "LODESTONE_EXPERIMENTAL_CORRUPT_CHECK_TIME",
        default_value = "0",
        value_parser = parse_duration
    )]
    pub experimental_corrupt_check_time: Duration,

    /// Interpret --auto-compaction-retention as a time span ('periodic') or as a number of
    /// revisions ('revision').
    #[arg(long, env = "LODESTONE_AUTO_COMPACTION_MODE", value_enum, default_value_t = CompactionMode::Periodic)]
    pub auto_compaction_mode: CompactionMode,

    /// Auto compaction retention: for 'periodic', a duration (`1h`, `30m`) or a bare number of
    /// hours; for 'revision', a number of revisions to keep. 0 disables auto compaction.
    #[arg(long, env = "LODESTONE_AUTO_COMPACTION_RETENTION", default_value = "0")]
    pub auto_compaction_retention: String,

    /// How often revision-mode auto compaction checks (etcd checks every 5 minutes; this
    /// flag is Lodestone's).
    #[arg(
        long,
        env = "LODESTONE_AUTO_COMPACTION_CHECK_INTERVAL",
        default_value = "5m",
        value_parser = parse_duration
    )]
    pub auto_compaction_check_interval: Duration,

    /// Additional URLs to listen on for the metrics and health endpoints (/metrics, /health,
    /// /version, /livez, /readyz). They are always served on the client URLs too; by
    /// default, as with etcd, no extra listener is opened.
    #[arg(long, env = "LODESTONE_LISTEN_METRICS_URLS", value_delimiter = ',')]
    pub listen_metrics_urls: Vec<String>,

    /// Path to the client server TLS cert file.
    #[arg(long, env = "LODESTONE_CERT_FILE")]
    pub cert_file: Option<PathBuf>,

    /// Path to the client server TLS key file.
    #[arg(long, env = "LODESTONE_KEY_FILE")]
    pub key_file: Option<PathBuf>,

    /// Enable client cert authentication: clients must present a certificate signed by
    /// --trusted-ca-file.
    #[arg(long, env = "LODESTONE_CLIENT_CERT_AUTH", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value_t = false, value_parser = clap::builder::BoolishValueParser::new())]
    pub client_cert_auth: bool,

    /// Path to the client server TLS trusted CA cert file.
    #[arg(long, env = "LODESTONE_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,

    /// Client TLS using generated certificates.
    #[arg(long, env = "LODESTONE_AUTO_TLS", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value_t = false, value_parser = clap::builder::BoolishValueParser::new())]
    pub auto_tls: bool,

    /// Path to the peer server TLS cert file.
    #[arg(long, env = "LODESTONE_PEER_CERT_FILE")]
    pub peer_cert_file: Option<PathBuf>,

    /// Path to the peer server TLS key file.
    #[arg(long, env = "LODESTONE_PEER_KEY_FILE")]
    pub peer_key_file: Option<PathBuf>,

    /// Enable peer client cert authentication: members must present a certificate signed
    /// by --peer-trusted-ca-file.
    #[arg(long, env = "LODESTONE_PEER_CLIENT_CERT_AUTH", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value_t = false, value_parser = clap::builder::BoolishValueParser::new())]
    pub peer_client_cert_auth: bool,

    /// Path to the peer server TLS trusted CA file.
    #[arg(long, env = "LODESTONE_PEER_TRUSTED_CA_FILE")]
    pub peer_trusted_ca_file: Option<PathBuf>,

    /// Peer TLS using self-generated certificates if --peer-key-file and --peer-cert-file
    /// are not provided.
    #[arg(long, env = "LODESTONE_PEER_AUTO_TLS", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value_t = false, value_parser = clap::builder::BoolishValueParser::new())]
    pub peer_auto_tls: bool,

    /// Comma-separated list of supported TLS 1.2 cipher suites between client/server and
    /// peers (Go's names; empty means the defaults).
    #[arg(long, env = "LODESTONE_CIPHER_SUITES", value_delimiter = ',')]
    pub cipher_suites: Vec<String>,

    /// Minimum TLS version supported: TLS1.2 or TLS1.3 [default: TLS1.2].
    #[arg(long, env = "LODESTONE_TLS_MIN_VERSION")]
    pub tls_min_version: Option<String>,

    /// Maximum TLS version supported: TLS1.2 or TLS1.3 [default: TLS1.3].
    #[arg(long, env = "LODESTONE_TLS_MAX_VERSION")]
    pub tls_max_version: Option<String>,

    /// Auth token type and its options: `simple`, or `jwt,pub-key=<file>,priv-key=<file>,
    /// sign-method=<RS256|ES256|...>,ttl=<duration>`.
    #[arg(long, env = "LODESTONE_AUTH_TOKEN", default_value = "simple")]
    pub auth_token: String,

    /// How long (seconds) a simple token stays valid without use.
    #[arg(long, env = "LODESTONE_AUTH_TOKEN_TTL", default_value_t = 300)]
    pub auth_token_ttl: u64,

    /// bcrypt cost for hashing auth passwords (4..=31).
    #[arg(long, env = "LODESTONE_BCRYPT_COST", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(4..=31))]
    pub bcrypt_cost: u32,

    /// Log level: debug, info, warn, error.
    #[arg(long, env = "LODESTONE_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Log format: text or json.
    #[arg(long, env = "LODESTONE_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompactionMode {
    Periodic,
    Revision,
}

/// Parses a Go duration as etcd's flags take them: a sequence of number+unit (`ns`, `us`,
/// `µs`, `ms`, `s`, `m`, `h`), e.g. `10m`, `1h30m`, `1.5s`, or `0`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("duration {s:?} is missing a unit (e.g. 10m, 500ms)"))?;
        let n: f64 = rest[..num_len].parse().map_err(|_| format!("invalid duration {s:?}"))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            u => return Err(format!("unknown unit {u:?} in duration {s:?}")),
        };
        total += n * scale;
        rest = &rest[unit_len..];
    }
    Ok(Duration::from_secs_f64(total))
}

/// What auto compaction should keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    Disabled,
    /// Keep this much time of history.
    Period(Duration),
    /// Keep this many revisions.
    Revisions(i64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ClusterState {
    New,
    Existing,
}

/// A configuration error, phrased so the operator knows what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--initial-cluster entry {0:?} is not of the form name=url")]
    BadClusterEntry(String),
    #[error("--initial-cluster has no entry for this member's --name {0:?}")]
    NameNotInCluster(String),
    #[error(
        "--initial-cluster lists {cluster:?} for {name:?} but --initial-advertise-peer-urls is {advertised:?}; they must match"
    )]
    PeerUrlMismatch {
        name: String,
        cluster: Vec<String>,
        advertised: Vec<String>,
    },
    #[error("invalid URL {0:?}: expected http://host:port or https://host:port")]
    BadUrl(String),
    #[error("could not resolve {0:?}")]
    Unresolvable(String),
    #[error("--auto-compaction-retention {0:?}: {1}")]
    BadRetention(String, String),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("{0}")]
    AuthToken(String),
}

/// One member as named in `--initial-cluster`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitialMember {
    pub name: String,
    pub peer_urls: Vec<String>,
    pub id: u64,
}

impl Config {
    /// The client URLs' TLS settings.
    pub fn client_tls(&self) -> tls::Side {
        tls::Side {
            flag_prefix: "",
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            trusted_ca_file: self.trusted_ca_file.clone(),
            client_cert_auth: self.client_cert_auth,
            auto_tls: self.auto_tls,
        }
    }

    /// The peer URLs' TLS settings (serving peers and dialing them).
    pub fn peer_tls(&self) -> tls::Side {
        tls::Side {
            flag_prefix: "peer-",
            cert_file: self.peer_cert_file.clone(),
            key_file: self.peer_key_file.clone(),
            trusted_ca_file: self.peer_trusted_ca_file.clone(),
            client_cert_auth: self.peer_client_cert_auth,
            auto_tls: self.peer_auto_tls,
        }
    }

    /// Cipher suites and protocol versions, shared by both sides.
    pub fn tls_policy(&self) -> tls::Policy {
        tls::Policy {
            cipher_suites: self.cipher_suites.clone(),
            min_version: self.tls_min_version.clone(),
            max_version: self.tls_max_version.clone(),
        }
    }

    /// Where `--auto-tls` and `--peer-auto-tls` keep their certificates (etcd's place).
    pub fn auto_tls_dir(&self, side: &str) -> PathBuf {
        self.data_dir().join("fixtures").join(side)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{}.lodestone", self.name)))
    }

    pub fn wal_dir(&self) -> PathBuf {
        self.wal_dir
            .clone()
            .unwrap_or_else(|| self.data_dir().join("member").join("wal"))
    }

    pub fn state_machine_dir(&self) -> PathBuf {
        self.data_dir().join("member").join("snap")
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval)
    }

    pub fn election(&self) -> Duration {
        Duration::from_millis(self.election_timeout)
    }

    /// How long a request may wait for consensus before timing out (etcd: 5 s plus two
    /// election timeouts).
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(5) + 2 * self.election()
    }

    /// The auto compaction policy from `--auto-compaction-mode` and `-retention`, read as
    /// etcd reads them (a bare number in periodic mode is hours).
    pub fn retention(&self) -> Result<Retention, ConfigError> {
        let raw = self.auto_compaction_retention.trim();
        let bad = |why: &str| ConfigError::BadRetention(raw.to_string(), why.to_string());
        match self.auto_compaction_mode {
            CompactionMode::Revision => {
                let n: i64 = raw
                    .parse()
                    .map_err(|_| bad("revision mode takes a number of revisions"))?;
                if n < 0 {
                    return Err(bad("must not be negative"));
                }
                Ok(if n == 0 {
                    Retention::Disabled
                } else {
                    Retention::Revisions(n)
                })
            }
            CompactionMode::Periodic => {
                let d = match raw.parse::<u64>() {
                    Ok(hours) => Duration::from_secs(hours * 3600),
                    Err(_) => parse_duration(raw).map_err(|e| bad(&e))?,
                };
                Ok(if d.is_zero() {
                    Retention::Disabled
                } else {
                    Retention::Period(d)
                })
            }
        }
    }

    pub fn quota(&self) -> i64 {
        if self.quota_backend_bytes <= 0 {
            2 << 30
        } else {
            self.quota_backend_bytes
        }
    }

    /// The members named in `--initial-cluster`, with their member ids, sorted by name.
    pub fn initial_members(&self) -> Result<Vec<InitialMember>, ConfigError> {
        let spec = match &self.initial_cluster {
            Some(s) => s.clone(),
            None => format!(
                "{}={}",
                self.name,
                self.initial_advertise_peer_urls.join(&format!(",{}=", self.name))
            ),
        };
        let mut by_name: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for part in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (n, u) = part
                .split_once('=')
                .ok_or_else(|| ConfigError::BadClusterEntry(part.to_string()))?;
            parse_url(u)?;
            by_name.entry(n.to_string()).or_default().push(u.to_string());
        }
        Ok(by_name
            .into_iter()
            .map(|(name, peer_urls)| {
                let id = member_id(&peer_urls, &self.initial_cluster_token);
                InitialMember { name, peer_urls, id }
            })
            .collect())
    }

    /// This member's entry in `--initial-cluster`, checked against its advertised peer URLs.
    pub fn self_member(&self, members: &[InitialMember]) -> Result<InitialMember, ConfigError> {
        let me = members
            .iter()
            .find(|m| m.name == self.name)
            .ok_or_else(|| ConfigError::NameNotInCluster(self.name.clone()))?;
        let mut a = me.peer_urls.clone();
        a.sort();
        let mut b = self.initial_advertise_peer_urls.clone();
        b.sort();
        if a != b {
            return Err(ConfigError::PeerUrlMismatch {
                name: self.name.clone(),
                cluster: me.peer_urls.clone(),
                advertised: self.initial_advertise_peer_urls.clone(),
            });
        }
        Ok(me.clone())
    }
}

/// A member id derived like etcd's: a hash of the sorted peer URLs and the cluster token.
pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let mut h = Sha256::new();
    for u in &urls {
        h.update(u.as_bytes());
    }
    h.update(token.as_bytes());
    let d = h.finalize();
    u64::from_be_bytes(d[..8].try_into().expect("8 bytes")).max(1)
}

/// The cluster id: a hash of the founding members' ids and the cluster token.
pub fn cluster_id(member_ids: &[u64], token: &str) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let mut h = Sha256::new();
    for id in ids {
        h.update(id.to_be_bytes());
    }
    h.update(token.as_bytes());
    let d = h.finalize();
    u64::from_be_bytes(d[..8].try_into().expect("8 bytes")).max(1)
}

/// Whether a URL asks for TLS (`https://`).
pub fn is_https(url: &str) -> bool {
    url.starts_with("https://")
}

/// Parses `http://host:port` (or `https://`) into `host:port`.
pub fn parse_url(url: &str) -> Result<String, ConfigError> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .or_else(|| url.strip_prefix("unix://"))
        .ok_or_else(|| ConfigError::BadUrl(url.to_string()))?;
    let hostport = rest.trim_end_matches('/');
    if !hostport.contains(':') {
        return Err(ConfigError::BadUrl(url.to_string()));
    }
    Ok(hostport.to_string())
}

/// Resolves a listen URL to socket addresses.
pub async fn resolve(url: &str) -> Result<Vec<SocketAddr>, ConfigError> {
    let hp = parse_url(url)?;
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(&hp)
        .await
        .map_err(|_| ConfigError::Unresolvable(url.to_string()))?
        .collect();
    if addrs.is_empty() {
        return Err(ConfigError::Unresolvable(url.to_string()));
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(args: &[&str]) -> Config {
        let mut v = vec!["lodestone"];
        v.extend_from_slice(args);
        Config::try_parse_from(v).unwrap()
    }

    #[test]
    fn durations_and_retention_parse_like_etcd() {
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("5y").is_err());
        assert_eq!(cfg(&[]).retention().unwrap(), Retention::Disabled);
        assert_eq!(
            cfg(&["--auto-compaction-retention", "1"]).retention().unwrap(),
            Retention::Period(Duration::from_secs(3600))
        );
        assert_eq!(
            cfg(&["--auto-compaction-retention", "30m"]).retention().unwrap(),
            Retention::Period(Duration::from_secs(1800))
        );
        assert_eq!(
            cfg(&[
                "--auto-compaction-mode",
                "revision",
                "--auto-compaction-retention",
                "1000"
            ])
            .retention()
            .unwrap(),
            Retention::Revisions(1000)
        );
        assert!(
            cfg(&[
                "--auto-compaction-mode",
                "revision",
                "--auto-compaction-retention",
                "1h"
            ])
            .retention()
            .is_err()
        );
        assert_eq!(
            cfg(&[]).experimental_watch_progress_notify_interval,
            Duration::from_secs(600)
        );
    }

    #[test]
    fn defaults_match_etcd() {
        let c = cfg(&[]);
        assert_eq!(c.name, "default");
        assert_eq!(c.data_dir(), PathBuf::from("default.lodestone"));
        assert_eq!(c.wal_dir(), PathBuf::from("default.lodestone/member/wal"));
        assert_eq!(c.listen_client_urls, vec!["http://127.0.0.1:2379"]);
        assert_eq!(c.max_request_bytes, 1_572_864);
        assert_eq!(c.max_txn_ops, 128);
        assert_eq!(c.heartbeat_interval, 100);
        assert_eq!(c.election_timeout, 1000);
        assert_eq!(c.auth_token, "simple");
        assert_eq!(c.auth_token_ttl, 300);
        assert_eq!(c.bcrypt_cost, 10);
        let m = c.initial_members().unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].name, "default");
        assert_eq!(c.self_member(&m).unwrap().peer_urls, vec!["http://127.0.0.1:2380"]);
    }

    #[test]
    fn initial_cluster_parsing_and_ids() {
        let c = cfg(&[
            "--name",
            "b",
            "--initial-cluster",
            "a=http://127.0.0.1:1,b=http://127.0.0.1:2,c=http://127.0.0.1:3",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:2",
        ]);
        let m = c.initial_members().unwrap();
        assert_eq!(m.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
        let ids: std::collections::BTreeSet<u64> = m.iter().map(|m| m.id).collect();
        assert_eq!(ids.len(), 3, "ids are distinct");
        assert_eq!(c.self_member(&m).unwrap().name, "b");
        // Same inputs give the same ids on every member; another token gives other ids.
        assert_eq!(member_id(&["http://127.0.0.1:2".into()], "etcd-cluster"), m[1].id);
        assert_ne!(member_id(&["http://127.0.0.1:2".into()], "other"), m[1].id);
    }

    #[test]
    fn mismatched_advertise_url_is_refused() {
        let c = cfg(&[
            "--name",
            "a",
            "--initial-cluster",
            "a=http://127.0.0.1:1",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:9",
        ]);
        let m = c.initial_members().unwrap();
        assert!(matches!(c.self_member(&m), Err(ConfigError::PeerUrlMismatch { .. })));
        let bad = cfg(&["--initial-cluster", "nonsense"]);
        assert!(matches!(bad.initial_members(), Err(ConfigError::BadClusterEntry(_))));
    }
}
