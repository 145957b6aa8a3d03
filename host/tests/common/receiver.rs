//! A notification receiver for the tests: `notifications/receiver.py` on
//! loopback, checking every signature with the reference `standardwebhooks`
//! package and logging each request.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The secrets key of servers that sign notifications.
pub const KEY: &str = "c2VjcmV0cyBrZXkgb2YgdGhlIHRlc3RzLCAzMiBiISE=";

/// The signing secret, a workspace secret named `hooks`.
pub const SECRET: &str = "whsec_bm90aWZpY2F0aW9ucyBvZiB0aGUgdGVzdHMsIDMyIGJ5dGVz";

/// A receiver on loopback, answering each path as planned.
pub struct Receiver {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Receiver {
    pub fn start(dir: &Path, plans: &[(&str, &str)]) -> Self {
        super::ensure_standardwebhooks();
        let log = dir.join("received.jsonl");
        let mut command = Command::new("python3");
        command
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/notifications/receiver.py"))
            .args(["--secret", SECRET, "--log"])
            .arg(&log);
        for (path, plan) in plans {
            command.args(["--plan", &format!("{path}={plan}")]);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("python3: {e}"));
        let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
        let line = BufReader::new(stdout)
            .lines()
            .next()
            .and_then(Result::ok)
            .unwrap_or_default();
        let port = line
            .strip_prefix("listening on ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("the receiver did not start: {line}"));
        Self { child, port, log }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Every request received so far.
    pub fn received(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The requests to `path`, once there are `n` of them.
    pub async fn wait_for(&self, path: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got: Vec<Value> = self.received().into_iter().filter(|r| r["path"] == path).collect();
            if got.len() >= n {
                return got;
            }
            assert!(Instant::now() < deadline, "{path} got {} of {n}: {got:?}", got.len());
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `people` importer notifying as `notifications` say, signed with the
/// workspace secret `hooks`.
pub async fn notifying(base: &str, notifications: Value) {
    let (s, b) = super::call(
        base,
        reqwest::Method::PUT,
        "/secrets/hooks",
        Some(serde_json::json!({"value": SECRET})),
    )
    .await;
    assert!(s == 201 || s == 200, "{b}");
    super::importer_extra(base, serde_json::json!({"notifications": notifications})).await;
}
