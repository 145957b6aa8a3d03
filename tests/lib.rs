//! Helpers for Weir's behaviour tests: run a connector through the engine's
//! public API on a file and read back what it wrote.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use tokio_util::sync::CancellationToken;
use weir_engine::connector::Connector;
use weir_engine::execution::{ConnectorRef, Execution, TriggerType};
use weir_engine::pipeline::{self, InputFile, Progress, Records, RunRequest, RunSettings};
use weir_engine::plugin::{PluginRuntime, PluginSettings};
use weir_engine::runlog::Collect;
use weir_engine::sources::SecretValues;
use weir_engine::transform::{PluginDir, Plugins};

/// The result of one run: the final document and where its outputs are.
pub struct Outcome {
    /// The execution document.
    pub doc: Execution,
    /// The output directory (kept alive with the outcome).
    pub out: tempfile::TempDir,
    /// The run's log lines, as `level: message`.
    pub logs: Vec<String>,
}

/// The component built from plugin crate `name` of `plugins/` (built by
/// this crate's build script).
pub fn plugin_wasm(name: &str) -> PathBuf {
    Path::new(env!("WEIR_PLUGINS")).join(format!("{}.wasm", name.replace('-', "_")))
}

/// A package `plugins/` directory holding the given plugin crates as
/// `<name>-0.1.0.wasm`.
pub fn plugin_dir(names: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    for name in names {
        let from = plugin_wasm(name);
        std::fs::copy(&from, dir.path().join(format!("{name}-0.1.0.wasm")))
            .unwrap_or_else(|e| panic!("copying {}: {e}", from.display()));
    }
    dir
}

/// One plugin runtime per test process, as a server has one per process.
pub fn plugin_runtime() -> Arc<PluginRuntime> {
    static RUNTIME: OnceLock<Arc<PluginRuntime>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| Arc::new(PluginRuntime::new(PluginSettings::default()).unwrap_or_else(|e| panic!("{e}"))))
        .clone()
}

/// Plugins from `dir` on the shared runtime.
pub fn plugins_from(dir: &Path) -> Plugins {
    Plugins {
        runtime: plugin_runtime(),
        source: Arc::new(PluginDir::new(dir)),
    }
}

impl Outcome {
    /// The text of `output/<scope>.csv`.
    pub fn output(&self, scope: &str) -> String {
        read(&self.out.path().join("output").join(format!("{scope}.csv")))
    }

    /// The rows of `rejected.csv` (without header), as string records.
    pub fn rejected(&self) -> Vec<csv::StringRecord> {
        let mut r = csv::Reader::from_path(self.out.path().join("rejected.csv"))
            .unwrap_or_else(|e| panic!("rejected.csv: {e}"));
        r.records()
            .map(|r| r.unwrap_or_else(|e| panic!("rejected.csv row: {e}")))
            .collect()
    }

    /// The error code, when the run failed.
    pub fn code(&self) -> Option<String> {
        self.doc.error.as_ref().map(|e| e.code.as_str().to_string())
    }

    /// The status as its wire name.
    pub fn status(&self) -> &'static str {
        self.doc.status.as_str()
    }

    /// The execution document as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::to_value(&self.doc).unwrap_or_else(|e| panic!("serialise: {e}"))
    }
}

/// Reads a file as UTF-8 text.
pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// A connector.toml with the given extra TOML (after the header keys).
pub fn connector(extra: &str) -> Connector {
    let text = format!("api_name = \"test\"\ntype = \"spreadsheet\"\nstatus = \"operational\"\n{extra}");
    Connector::from_toml(&text).unwrap_or_else(|e| panic!("connector: {e}"))
}

/// Writes `bytes` to a file named `name` in a fresh directory.
pub fn input(name: &str, bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("{e}"));
    (dir, path)
}

/// Runs `script` on `file` (named `name`) with `connector`, in a dry run.
pub async fn run(connector: Connector, script: &str, name: &str, bytes: &[u8]) -> Outcome {
    let (_dir, path) = input(name, bytes);
    run_path(
        connector,
        script,
        Some(InputFile {
            path,
            name: name.to_string(),
        }),
        CancellationToken::new(),
    )
    .await
}

/// Runs a script on an input file (or none) with a cancellation token.
pub async fn run_path(
    connector: Connector,
    script: &str,
    input: Option<InputFile>,
    cancel: CancellationToken,
) -> Outcome {
    let settings = RunSettings {
        threads: 2,
        ..RunSettings::default()
    };
    run_with(connector, script, input, cancel, None, settings).await
}

/// Runs a script with everything chosen: records to load into (not a dry
/// run then) and the run settings (threads, batch size, limits).
pub async fn run_with(
    connector: Connector,
    script: &str,
    input: Option<InputFile>,
    cancel: CancellationToken,
    records: Option<Records>,
    settings: RunSettings,
) -> Outcome {
    run_full(Run {
        connector,
        script: script.to_string(),
        input,
        cancel,
        records,
        plugins: None,
        settings,
        secrets: SecretValues::default(),
    })
    .await
}

/// Everything a test run can be given.
pub struct Run {
    /// The connector.
    pub connector: Connector,
    /// The SQL script.
    pub script: String,
    /// The input file.
    pub input: Option<InputFile>,
    /// Cancels the run.
    pub cancel: CancellationToken,
    /// Where loads write (none: a dry run).
    pub records: Option<Records>,
    /// The plugin runtime and source.
    pub plugins: Option<Plugins>,
    /// Tunables.
    pub settings: RunSettings,
    /// Secrets for the connector's sources.
    pub secrets: SecretValues,
}

/// Runs with everything chosen; the outcome carries the run's log lines.
pub async fn run_full(run: Run) -> Outcome {
    let Run {
        connector,
        script,
        input,
        cancel,
        records,
        plugins,
        settings,
        secrets,
    } = run;
    let lines = Arc::new(Collect::default());
    let out = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let execution = Execution::new(
        "00000000-0000-7000-8000-000000000000".into(),
        ConnectorRef {
            id: None,
            api_name: connector.api_name.clone(),
            version: None,
        },
        TriggerType::Local,
        records.is_none(),
    );
    let progress = Progress::new(execution.clone());
    let request = RunRequest {
        connector,
        script,
        input,
        execution,
        out_dir: out.path().to_path_buf(),
        settings,
        cancel,
        records,
        plugins,
        log: lines.clone(),
        secrets,
    };
    let doc = pipeline::run(request, &progress).await;
    let logs = lines.take();
    Outcome { doc, out, logs }
}

/// The script that passes the input through as scope `rows`.
pub const PASS_THROUGH: &str = "CREATE VIEW output.rows AS SELECT * FROM input.data";
