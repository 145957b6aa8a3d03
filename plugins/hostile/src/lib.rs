//! A plugin that misbehaves on purpose, for testing that the host survives
//! every way a plugin can go wrong. It speaks the raw contract (no SDK
//! helpers) so that it can also break the protocol.
//!
//! Config: `mode` (what to do) and `phase` (`init` or `process`, the
//! default). Modes: `loop`, `sleep`, `memory`, `recursion`, `panic`, `trap`,
//! `stdout_flood`, `bad_arrow`, `bad_row_index`, `double_reject`, `wrong_schema`, `files`,
//! `network` (with `address`, `host:port`), `none` (behaves).

use std::cell::RefCell;
use std::hint::black_box;
use std::io::Write;

use weir_plugin::bindings::exports::weir::transform::transform::{Error, Guest, Output};
use weir_plugin::bindings::weir::transform::types::RowError;

#[derive(serde::Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
struct Config {
    mode: String,
    #[serde(default)]
    phase: Option<String>,
    #[serde(default)]
    address: Option<String>,
}

thread_local! {
    static CONFIG: RefCell<Config> = RefCell::new(Config::default());
}

struct Hostile;

impl Guest for Hostile {
    fn init(config: String, input_schema: Vec<u8>) -> Result<Vec<u8>, Error> {
        let config: Config =
            weir_plugin::serde_json::from_str(&config).map_err(|e| Error::InvalidConfig(e.to_string()))?;
        CONFIG.with(|c| *c.borrow_mut() = config.clone());
        if config.phase.as_deref() == Some("init") {
            misbehave(&config, &input_schema)?;
        }
        Ok(input_schema)
    }

    fn process(batch: Vec<u8>) -> Result<Output, Error> {
        let config = CONFIG.with(|c| c.borrow().clone());
        if config.phase.as_deref().unwrap_or("process") == "process" {
            return misbehave(&config, &batch);
        }
        Ok(Output {
            batch,
            rejected: Vec::new(),
        })
    }

    fn finish() -> Result<Option<Output>, Error> {
        Ok(None)
    }
}

fn misbehave(config: &Config, batch: &[u8]) -> Result<Output, Error> {
    let pass = || Output {
        batch: batch.to_vec(),
        rejected: Vec::new(),
    };
    match config.mode.as_str() {
        "none" => Ok(pass()),
        "loop" => {
            let mut n = 0u64;
            loop {
                n = black_box(n.wrapping_add(1));
            }
        }
        "memory" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(black_box(vec![7u8; 16 << 20]));
            }
        }
        "recursion" => Ok(Output {
            batch: vec![black_box(deep(u64::MAX)) as u8],
            rejected: Vec::new(),
        }),
        "panic" => panic!("the hostile plugin panics on purpose"),
        "sleep" => {
            std::thread::sleep(std::time::Duration::from_secs(3600));
            Ok(pass())
        }
        "trap" => core::arch::wasm32::unreachable(),
        "stdout_flood" => {
            let line = "x".repeat(99);
            let mut out = std::io::stdout().lock();
            for i in 0..1_000_000 {
                let _ = writeln!(out, "{i:08} {line}");
            }
            for i in 0..100_000 {
                eprintln!("stderr line {i}");
            }
            Ok(pass())
        }
        "bad_arrow" => Ok(Output {
            batch: b"this is not an Arrow IPC stream".to_vec(),
            rejected: Vec::new(),
        }),
        "bad_row_index" => Ok(Output {
            batch: batch.to_vec(),
            rejected: vec![RowError {
                row: u32::MAX,
                message: "no such row".into(),
            }],
        }),
        "double_reject" => Ok(Output {
            batch: batch.to_vec(),
            rejected: vec![
                RowError {
                    row: 0,
                    message: "once".into(),
                },
                RowError {
                    row: 0,
                    message: "twice".into(),
                },
            ],
        }),
        "wrong_schema" => {
            use weir_plugin::arrow_array::{Int64Array, RecordBatch};
            use weir_plugin::arrow_schema::{DataType, Field, Schema};
            let schema = std::sync::Arc::new(Schema::new(vec![Field::new("surprise", DataType::Int64, false)]));
            let surprise = RecordBatch::try_new(
                schema.clone(),
                vec![std::sync::Arc::new(Int64Array::from(vec![1, 2, 3]))],
            )
            .map_err(|e| Error::Failed(e.to_string()))?;
            let mut writer = weir_plugin::arrow_ipc::writer::StreamWriter::try_new(Vec::new(), &schema)
                .map_err(|e| Error::Failed(e.to_string()))?;
            writer.write(&surprise).map_err(|e| Error::Failed(e.to_string()))?;
            writer.finish().map_err(|e| Error::Failed(e.to_string()))?;
            Ok(Output {
                batch: writer.into_inner().map_err(|e| Error::Failed(e.to_string()))?,
                rejected: Vec::new(),
            })
        }
        "files" => {
            let mut found = Vec::new();
            match std::fs::read_to_string("/etc/passwd") {
                Ok(text) => found.push(format!("read {} bytes of /etc/passwd", text.len())),
                Err(e) => found.push(format!("reading /etc/passwd: {e}")),
            }
            match std::fs::write("weir-escape.txt", b"escaped") {
                Ok(()) => found.push("wrote weir-escape.txt".to_string()),
                Err(e) => found.push(format!("writing weir-escape.txt: {e}")),
            }
            match std::fs::read_dir(".") {
                Ok(entries) => found.push(format!("listed {} entries of .", entries.count())),
                Err(e) => found.push(format!("listing .: {e}")),
            }
            found.push(format!("{} environment variables", std::env::vars().count()));
            Err(Error::Failed(found.join("; ")))
        }
        "network" => {
            let address = config.address.clone().unwrap_or_else(|| "127.0.0.1:80".into());
            match std::net::TcpStream::connect(&address) {
                Ok(_) => Err(Error::Failed(format!("connected to {address}"))),
                Err(e) => Err(Error::Failed(format!("connecting to {address}: {e}"))),
            }
        }
        other => Err(Error::InvalidConfig(format!("unknown mode `{other}`"))),
    }
}

fn deep(n: u64) -> u64 {
    let frame = black_box([n as u8; 256]);
    if n == 0 {
        frame[0] as u64
    } else {
        deep(black_box(n - 1)).wrapping_add(frame[1] as u64)
    }
}

weir_plugin::bindings::export!(Hostile with_types_in weir_plugin::bindings);
