//! Notifications of ended executions (docs/notifications.md).
//!
//! A connector's `[[notifications]]` are stored when its execution ends, in
//! the transaction of the end (the state store's outbox), so no end is
//! kept without them. Any process then delivers them: [`deliverer`] claims
//! what is due for a while (a process that dies mid-attempt leaves its
//! claim to expire), POSTs each signed as Standard Webhooks with the same
//! `webhook-id` on every attempt, stores the attempt with its answer, and
//! schedules the next with exponential backoff and jitter until
//! `notification_retry_for` has passed. At least once: a receiver may see
//! an attempt twice (a process killed after sending, before storing), and
//! tells them apart by `webhook-id`.
//!
//! Destinations are checked when a connector is saved and again at every
//! attempt, after resolving the host: a notification reaches no loopback,
//! private, link-local or otherwise non-public address unless
//! `notification_allowed` lists it, follows no redirect and uses no proxy,
//! so a connector cannot make the server probe its own network.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use tokio::sync::{Notify, Semaphore};
use weir_engine::connector::Connector;
use weir_engine::error::Problem;

use super::App;
use super::state::{AfterAttempt, AttemptRow, NotificationRow};

/// How long a process holds the notifications it claimed; one that has
/// not stored an attempt by then is taken again by any process.
const CLAIM: Duration = Duration::from_secs(60);

/// How long an attempt waits for the receiver's answer.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Notifications claimed at a time, and sent at once by one process.
const IN_FLIGHT: usize = 32;

/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// How often a process looks for notifications others stored.
const POLL: Duration = Duration::from_secs(1);

/// Where notifications may go besides public addresses: the
/// `notification_allowed` setting.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    nets: Vec<(IpAddr, u8)>,
    hosts: Vec<String>,
}

impl Policy {
    /// Reads `notification_allowed`: addresses (`127.0.0.1`), networks
    /// (`10.0.0.0/8`, `fd00::/8`) and host names (`hooks.internal`),
    /// separated by commas.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut policy = Policy::default();
        for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (addr, bits) = match item.split_once('/') {
                Some((a, b)) => (a, Some(b)),
                None => (item, None),
            };
            match addr.parse::<IpAddr>() {
                Ok(ip) => {
                    let max = if ip.is_ipv4() { 32 } else { 128 };
                    let bits = match bits {
                        None => max,
                        Some(b) => b
                            .parse::<u8>()
                            .ok()
                            .filter(|b| *b <= max)
                            .ok_or_else(|| format!("`{item}`: the prefix length must be 0 to {max}"))?,
                    };
                    policy.nets.push((ip, bits));
                }
                Err(_) if bits.is_none() && !item.contains(['/', ':', ' ']) => {
                    policy.hosts.push(item.to_ascii_lowercase());
                }
                Err(_) => return Err(format!("`{item}` is neither an address, a network nor a host name")),
            }
        }
        Ok(policy)
    }

    fn lists_host(&self, host: &str) -> bool {
        self.hosts.iter().any(|h| h.eq_ignore_ascii_case(host))
    }

    fn lists_ip(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|(net, bits)| within(ip, *net, *bits))
    }

    /// Why `ip` may not be reached (of host `host`), if it may not.
    fn refusal(&self, host: &str, ip: IpAddr) -> Option<String> {
        if self.lists_host(host) || self.lists_ip(ip) {
            return None;
        }
        not_public(ip).map(|kind| {
            format!("`{host}` is {kind} address {ip}; notifications reach it only if notification_allowed lists it")
        })
    }

    /// The problem of a notification's destination, checked when its
    /// connector is saved (the host is resolved again at every attempt).
    pub fn check_url(&self, url: &str) -> Result<(), String> {
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!("`{url}` is not an http or https URL"));
        }
        match parsed.host() {
            None => Err(format!("`{url}` names no host")),
            Some(url::Host::Ipv4(ip)) => self.refusal(&ip.to_string(), IpAddr::V4(ip)).map_or(Ok(()), Err),
            Some(url::Host::Ipv6(ip)) => self.refusal(&ip.to_string(), IpAddr::V6(ip)).map_or(Ok(()), Err),
            Some(url::Host::Domain(name)) => {
                let local = name.eq_ignore_ascii_case("localhost") || name.to_ascii_lowercase().ends_with(".localhost");
                if local && !self.lists_host(name) {
                    Err(format!(
                        "`{name}` is a loopback name; notifications reach it only if notification_allowed lists it"
                    ))
                } else {
                    Ok(())
                }
            }
        }
    }
}

/// Whether `ip` is in `net`/`bits`.
fn within(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(a) & mask == u128::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V4(_)) => a.to_ipv4_mapped().is_some_and(|a| within(IpAddr::V4(a), net, bits)),
        (IpAddr::V4(_), IpAddr::V6(_)) => false,
    }
}

/// What kind of address `ip` is when it is not a public one.
fn not_public(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            if v4.is_loopback() {
                Some("a loopback")
            } else if v4.is_private() {
                Some("a private")
            } else if v4.is_link_local() {
                Some("a link-local")
            } else if a == 100 && (64..128).contains(&b) {
                Some("a shared (carrier-grade NAT)")
            } else if v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast() || a == 0 || a >= 240 {
                Some("a non-unicast or reserved")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return not_public(IpAddr::V4(v4));
            }
            if v6.is_loopback() {
                Some("a loopback")
            } else if v6.is_unique_local() {
                Some("a private")
            } else if v6.is_unicast_link_local() {
                Some("a link-local")
            } else if v6.is_unspecified() || v6.is_multicast() {
                Some("a non-unicast")
            } else {
                None
            }
        }
    }
}

/// Every problem of a connector's notifications at save: destinations the
/// policy refuses, and signing secrets the workspace does not have.
pub fn problems(connector: &Connector, policy: &Policy, has_secret: impl Fn(&str) -> bool) -> Vec<Problem> {
    let mut problems = Vec::new();
    for (i, n) in connector.notifications.iter().enumerate() {
        if let Err(e) = policy.check_url(&n.url) {
            problems.push(Problem::new(format!("notifications[{i}].url"), e));
        }
        if !has_secret(&n.secret) {
            problems.push(Problem::new(
                format!("notifications[{i}].secret"),
                format!(
                    "the workspace has no secret `{}`; set it first (PUT /api/v1/secrets/{})",
                    n.secret, n.secret
                ),
            ));
        }
    }
    problems
}

/// Resolves a notification's host and keeps only the addresses the policy
/// lets it reach, so that a name cannot lead to a refused address.
struct Guarded(Arc<Policy>);

impl Resolve for Guarded {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.0.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut why = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| match policy.refusal(&host, a.ip()) {
                    None => true,
                    Some(e) => {
                        why = Some(e);
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                return Err(why.unwrap_or_else(|| format!("`{host}` has no address")).into());
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// What delivers notifications: its HTTP client and its wake-up.
pub struct Notifier {
    client: reqwest::Client,
    policy: Arc<Policy>,
    wake: Notify,
    in_flight: Arc<Semaphore>,
}

impl Notifier {
    /// A notifier held to `policy`.
    pub fn new(policy: Policy) -> Result<Self, String> {
        let policy = Arc::new(policy);
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(ATTEMPT_TIMEOUT)
            .user_agent(concat!("weir/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(Arc::new(Guarded(policy.clone())))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            client,
            policy,
            wake: Notify::new(),
            in_flight: Arc::new(Semaphore::new(IN_FLIGHT)),
        })
    }

    /// Looks for due notifications now (an execution ended here, or one
    /// was redelivered).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The policy destinations are held to.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// Delivers this process's share of due notifications until the process
/// ends.
pub async fn deliverer(app: Arc<App>) {
    loop {
        let free = app.notifier.in_flight.available_permits();
        // With every slot taken, the next attempt to end wakes the loop.
        let mut wait = POLL;
        if free > 0 {
            let now = now_ms();
            let until = now + CLAIM.as_millis() as i64;
            match app.db.claim_notifications(app.worker.id(), now, until, free) {
                Ok(rows) => {
                    for row in rows {
                        let Ok(permit) = app.notifier.in_flight.clone().acquire_owned().await else {
                            return;
                        };
                        let app = app.clone();
                        tokio::spawn(async move {
                            attempt(&app, row).await;
                            drop(permit);
                            // A slot is free: what waits may go.
                            app.notifier.wake();
                        });
                    }
                }
                Err(e) => tracing::warn!(error = %e, "claiming notifications failed"),
            }
            // What another process holds counts from when its claim ends,
            // so a held notification is not asked for again and again.
            if let Some(at) = app.db.next_notification_due().ok().flatten() {
                wait = Duration::from_millis(u64::try_from(at - now_ms()).unwrap_or(0)).min(POLL);
            }
        }
        tokio::select! {
            () = app.notifier.wake.notified() => {}
            () = tokio::time::sleep(wait.max(Duration::from_millis(5))) => {}
        }
    }
}

/// Sends one attempt of `row`, stores it, and schedules the next.
async fn attempt(app: &App, row: NotificationRow) {
    let number = row.attempts + 1;
    let at = Utc::now();
    let started = Instant::now();
    let (status, error) = match send(app, &row).await {
        Ok(status) if (200..300).contains(&status) => (Some(status), None),
        Ok(status) if (300..400).contains(&status) => (
            Some(status),
            Some(format!(
                "answered {status}, a redirect; notifications do not follow redirects"
            )),
        ),
        Ok(status) => (Some(status), Some(format!("answered {status}"))),
        Err(e) => (None, Some(e)),
    };
    let took_ms = started.elapsed().as_millis() as u64;
    let next = if error.is_none() {
        AfterAttempt::Delivered
    } else {
        let retry_for =
            chrono::TimeDelta::from_std(app.settings.notification_retry_for).unwrap_or(chrono::TimeDelta::MAX);
        let until = row.retry_until.unwrap_or_else(|| {
            row.created_at
                .checked_add_signed(retry_for)
                .map_or(i64::MAX, |t| t.timestamp_millis())
        });
        let at = now_ms() + backoff(app.settings.notification_backoff, number).as_millis() as i64;
        if at > until {
            AfterAttempt::GiveUp
        } else {
            AfterAttempt::RetryAt(at)
        }
    };
    let attempt = AttemptRow {
        attempt: number,
        at,
        status,
        error: error.map(|e| app.hide_paths(&e)),
        took_ms,
    };
    match app
        .db
        .record_attempt(&row.execution_id, row.n, app.worker.id(), &attempt, next)
    {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(execution = %row.execution_id, n = row.n, "a notification's claim was lost before its attempt was stored")
        }
        Err(e) => {
            tracing::warn!(execution = %row.execution_id, n = row.n, error = %e, "storing a notification attempt failed")
        }
    }
    app.metrics.notification(next);
}

/// The wait before attempt `number + 1`: `base` doubled each attempt, at
/// most [`MAX_BACKOFF`], give or take a fifth at random so that receivers
/// that came back are not met by every sender at once.
fn backoff(base: Duration, number: u32) -> Duration {
    let doubled = base
        .saturating_mul(1 << number.saturating_sub(1).min(20))
        .min(MAX_BACKOFF);
    let mut byte = [0u8; 1];
    let jitter = match getrandom::fill(&mut byte) {
        Ok(()) => 0.8 + 0.4 * f64::from(byte[0]) / 255.0,
        Err(_) => 1.0,
    };
    doubled.mul_f64(jitter)
}

/// POSTs `row`'s body, signed with its workspace secret; the status
/// answered, or why there was none.
async fn send(app: &App, row: &NotificationRow) -> Result<u16, String> {
    let secret = super::secrets::open(
        app.db.as_ref(),
        app.settings.secrets_key.as_ref(),
        &row.workspace_id,
        &row.secret,
    )?
    .ok_or_else(|| format!("the workspace has no secret `{}` to sign with", row.secret))?;
    app.notifier.policy.check_url(&row.url)?;
    let timestamp = Utc::now().timestamp().to_string();
    let signature = super::webhooks::sign(&secret, &row.webhook_id, &timestamp, row.body.as_bytes())?;
    let response = app
        .notifier
        .client
        .post(&row.url)
        .header("content-type", "application/json")
        .header("webhook-id", &row.webhook_id)
        .header("webhook-timestamp", &timestamp)
        .header("webhook-signature", signature)
        .body(row.body.clone())
        .send()
        .await
        .map_err(|e| describe(&e))?;
    Ok(response.status().as_u16())
}

/// A failed request, said with its cause (a refused address, a timeout).
fn describe(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        format!("no answer within {} s", ATTEMPT_TIMEOUT.as_secs())
    } else if e.is_connect() {
        "could not connect".to_string()
    } else {
        "the request failed".to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_reached_unless_allowed() {
        let none = Policy::default();
        for url in [
            "http://127.0.0.1:9000/x",
            "http://10.1.2.3/x",
            "http://172.16.0.1/x",
            "http://192.168.1.1/x",
            "http://169.254.169.254/latest/meta-data",
            "http://100.64.0.1/x",
            "http://0.0.0.0/x",
            "http://[::1]/x",
            "http://[fd00::1]/x",
            "http://[fe80::1]/x",
            "http://[::ffff:127.0.0.1]/x",
            "http://localhost:8080/x",
            "http://api.localhost/x",
        ] {
            assert!(none.check_url(url).is_err(), "{url}");
        }
        for url in [
            "https://hooks.example.com/weir",
            "http://203.0.113.9/x",
            "https://[2001:db8::1]/x",
        ] {
            assert_eq!(none.check_url(url), Ok(()), "{url}");
        }
        for url in ["ftp://example.com/x", "example.com/x", "http://"] {
            assert!(none.check_url(url).is_err(), "{url}");
        }
        let allowed = Policy::parse("127.0.0.1, 10.0.0.0/8, fd00::/8, hooks.internal").unwrap_or_default();
        for url in [
            "http://127.0.0.1:9000/x",
            "http://10.200.0.1/x",
            "http://[fd00::5]/x",
            "http://[::ffff:10.0.0.1]/x",
        ] {
            assert_eq!(allowed.check_url(url), Ok(()), "{url}");
        }
        assert!(allowed.check_url("http://127.0.0.2/x").is_err());
        assert!(allowed.check_url("http://192.168.0.1/x").is_err());
        assert_eq!(
            allowed.refusal("hooks.internal", "10.9.9.9".parse().unwrap_or(IpAddr::from([0; 4]))),
            None
        );
        assert!(Policy::parse("10.0.0.0/33").is_err());
        assert!(Policy::parse("a b").is_err());
    }

    #[test]
    fn waits_double_with_jitter_up_to_an_hour() {
        let base = Duration::from_secs(10);
        for (attempt, nominal) in [(1, 10.0), (2, 20.0), (3, 40.0), (4, 80.0)] {
            let wait = backoff(base, attempt).as_secs_f64();
            assert!(
                (nominal * 0.8..=nominal * 1.2).contains(&wait),
                "attempt {attempt}: {wait}"
            );
        }
        assert!(backoff(base, 40) <= MAX_BACKOFF.mul_f64(1.2));
    }
}
