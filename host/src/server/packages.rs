//! The packages service: dev packages (SPEC §7), made from a connector for
//! `weir run` on a laptop with the same engine, and taken back:
//!
//! ```text
//! manifest.json   format, engine version, connector id/api_name/version,
//!                 source file {id, name, sha256}, sha256 of every file
//! connector.toml  the definition; its script is script.sql
//! objects.toml    the objects its load steps write to (and their relations')
//! script.sql      the live (or draft) script
//! plugins/        <name>-<version>.wasm of every transform step
//! data/<file>     the given source file, else the connector's sample
//! records/        with ?records=true: the records its load steps match
//! README.md       how to run it
//! ```
//!
//! A pushed package (or a hand-made one) creates or updates the connector:
//! its script becomes the draft, its `data/` file the sample, objects it
//! names that the workspace lacks are created, and its plugins are
//! published. Everything is checked before anything is written, and then
//! written in one transaction: a refused package changes nothing. The zip is
//! unpacked with the engine's checks (no traversal, absolute paths, links,
//! or bombs).
//!
//! A connector holds no secret values (a webhook secret and a source's
//! credentials are named, by a variable or a workspace secret), so none can
//! leak into a package; `manifest.json` lists the secrets its sources need.
//! The service holds the state store, the blob and record stores, and the
//! files, plugins and connectors services.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use weir_engine::Error as EngineError;
use weir_engine::connector::{Connector, PluginRef, SqlSource};
use weir_engine::error::Problem;
use weir_engine::objects::Objects;
use weir_engine::package::Package;
use weir_engine::pipeline::InputFile;
use weir_engine::store::RecordStore;
use weir_engine::written::Written;

use super::auth::Caller;
use super::blobs::Blobs;
use super::config::Settings;
use super::connectors::Connectors;
use super::files::Files;
use super::plugins::{Checked, PluginError, Plugins};
use super::refusal::{Kind, Refusal, Refused};
use super::state::{ConnectorRow, ConnectorWrite, FileRow, PackageWrite, PluginRow, PushRefused, StateStore};

/// The package format this server writes.
const FORMAT: u32 = 1;

/// What a dev package holds beside the connector.
#[derive(Debug, Default)]
pub struct DevPackageAsk {
    /// The input file to include; the connector's sample when absent.
    pub source_file_id: Option<String>,
    /// `live` (the default) or `draft`.
    pub version: Option<String>,
    /// Include a snapshot of the records the load steps match against.
    pub records: bool,
}

/// A connector as a push left it.
#[derive(Debug)]
pub struct Pushed {
    /// The connector.
    pub row: ConnectorRow,
    /// The push created it.
    pub created: bool,
}

/// Dev packages of connectors.
#[derive(Clone)]
pub struct Packages {
    db: Arc<dyn StateStore>,
    blobs: Blobs,
    records: Arc<dyn RecordStore>,
    files: Files,
    plugins: Plugins,
    connectors: Connectors,
    settings: Arc<Settings>,
}

impl Packages {
    /// The service.
    pub fn new(
        db: Arc<dyn StateStore>,
        blobs: Blobs,
        records: Arc<dyn RecordStore>,
        files: Files,
        plugins: Plugins,
        connectors: Connectors,
        settings: Arc<Settings>,
    ) -> Self {
        Self {
            db,
            blobs,
            records,
            files,
            plugins,
            connectors,
            settings,
        }
    }

    /// Creates or updates connector `c` (its id or api_name; the package's
    /// api_name for a new one) from the package zip at `zip`.
    pub async fn push(&self, caller: &Caller, c: &str, zip: &Path) -> Refused<Pushed> {
        let path = zip.to_path_buf();
        // A package unpacks to no more than an upload may be.
        let limit = self.settings.max_upload;
        let package = tokio::task::spawn_blocking(move || Package::load_limited(&path, limit))
            .await
            .map_err(Refusal::internal)?
            .map_err(|e| match e {
                EngineError::InvalidConnector(problems) => {
                    Refusal::invalid("invalid_package", "the package cannot be used", problems)
                }
                other => Refusal::invalid(
                    "invalid_package",
                    "the package cannot be used",
                    vec![Problem::new("", other.to_string())],
                ),
            })?;
        let existing = match self.connectors.find(caller, c) {
            Ok(row) => Some(row),
            Err(e) if e.kind == Kind::NotFound && c == package.connector.api_name => None,
            Err(e) => return Err(e),
        };
        if let Some(row) = &existing
            && row.api_name != package.connector.api_name
        {
            return Err(Refusal::invalid(
                "invalid_package",
                format!(
                    "the package is connector `{}`, not `{}`",
                    package.connector.api_name, row.api_name
                ),
                vec![],
            ));
        }

        if caller.connectors.is_some() {
            self.within_reach(caller, &package, existing.is_some())?;
        }

        // Everything is checked before anything is written: a refused package
        // changes nothing (README "Dev packages", docs/reliability.md).
        let workspace = caller.workspace_id.clone();
        let mut objects = self.db.object_defs(&workspace)?;
        let mut new_objects = Vec::new();
        if let Some(brought) = &package.objects {
            // Relations may point to the workspace's objects and the package's.
            let known: Vec<String> = objects
                .objects
                .iter()
                .chain(&brought.objects)
                .map(|o| o.name.clone())
                .collect();
            for def in &brought.objects {
                if objects.get(&def.name).is_none() {
                    new_objects.push(super::objects::checked(def, &known)?);
                }
            }
            objects.objects.extend(new_objects.iter().cloned());
        }
        let mut new_plugins: Vec<(PluginRow, Vec<u8>)> = Vec::new();
        for t in &package.connector.transforms {
            if let Some((row, wasm)) = self.plugin_to_publish(caller, &package, &t.plugin).await?
                && !new_plugins
                    .iter()
                    .any(|(r, _)| r.name == row.name && r.version == row.version)
            {
                new_plugins.push((row, wasm));
            }
        }
        let mut staged = Vec::new();
        let sample = match &package.data_file {
            Some(file) => {
                let bytes = tokio::fs::read(&file.path).await.map_err(Refusal::internal)?;
                let size = bytes.len() as u64;
                // The staged copy is not in the store yet.
                let (tmp, sha256) = self.blobs.stage(bytes).await.map_err(Refusal::internal)?;
                staged.push((tmp, sha256.clone()));
                Some(FileRow {
                    sha256,
                    size,
                    name: file.name.clone(),
                    content_type: "application/octet-stream".into(),
                    created_at: chrono::Utc::now(),
                })
            }
            None => None,
        };
        let sample_file_id = sample
            .as_ref()
            .map(|f| f.sha256.clone())
            .or_else(|| existing.as_ref().and_then(|r| r.sample_file_id.clone()));

        // The package's definition, its script as the draft; the status stays
        // the server's (a new connector starts in setup).
        let mut doc = serde_json::to_value(&package.connector).map_err(Refusal::internal)?;
        let status = match &existing {
            Some(row) => serde_json::to_value(row.connector.status).map_err(Refusal::internal)?,
            None => serde_json::Value::String("setup".into()),
        };
        if let serde_json::Value::Object(map) = &mut doc {
            map.insert("sql".into(), serde_json::json!({"text": package.script}));
            map.insert("status".into(), status);
        }
        let (connector, created) = match &existing {
            Some(row) => {
                let mut submitted = self
                    .connectors
                    .parse_among(caller, doc, row.live_version.is_some(), &objects)?;
                submitted.sample_file_id = sample_file_id;
                let stored_sample = match (&package.data_file, &row.sample_file_id) {
                    (None, Some(id)) => match self.db.file(&workspace, id)? {
                        Some(f) => Some((self.blobs.on_disk(&f.sha256).await.map_err(Refusal::internal)?, f.name)),
                        None => None,
                    },
                    _ => None,
                };
                let sample = match (&package.data_file, &stored_sample) {
                    (Some(file), _) => Some(file.clone()),
                    (None, Some((on_disk, name))) => Some(InputFile {
                        path: on_disk.path().to_path_buf(),
                        name: name.clone(),
                    }),
                    (None, None) => None,
                };
                let updated = self
                    .connectors
                    .check_replace(caller, row, &submitted, &objects, sample.as_ref())
                    .await?;
                let draft = submitted.draft;
                (ConnectorWrite::Update { row: updated, draft }, false)
            }
            None => {
                let mut submitted = self.connectors.parse_among(caller, doc, false, &objects)?;
                submitted.sample_file_id = sample_file_id;
                let (row, draft) = super::connectors::new_row(caller, submitted)?;
                (ConnectorWrite::Insert { row, draft }, true)
            }
        };

        // Then one transaction; the content it refers to is placed first and
        // leaves again when the transaction does not happen.
        let mut plugins = Vec::new();
        for (row, wasm) in new_plugins {
            staged.push(self.blobs.stage(wasm).await.map_err(Refusal::internal)?);
            plugins.push(row);
        }
        let contents: Vec<String> = staged.iter().map(|(_, sha)| sha.clone()).collect();
        let write = PackageWrite {
            objects: new_objects.clone(),
            plugins,
            sample: sample.map(|f| (f, caller.key_id.clone())),
            connector,
        };
        let (into, writing) = (workspace.clone(), write.clone());
        let written = match self
            .files
            .keep_with(staged, move |db| db.write_package(&into, &writing))
            .await
        {
            Ok(written) => written.map_err(Refusal::from),
            Err(e) => Err(Refusal::from(e)),
        };
        let refused = match written {
            Ok(Ok(())) => None,
            Ok(Err(PushRefused::NameTaken)) => Some(Refusal::conflict(
                "connector_exists",
                format!("a connector named `{}` exists", package.connector.api_name),
            )),
            Ok(Err(PushRefused::PluginTaken(reference))) => Some(PluginError::VersionTaken(reference).into()),
            Err(e) => Some(e),
        };
        if let Some(e) = refused {
            for sha256 in &contents {
                self.files.forget_content(sha256).await;
            }
            return Err(e);
        }
        for def in &new_objects {
            self.records.ensure_object(&workspace, def).map_err(Refusal::internal)?;
        }
        let row = match &write.connector {
            ConnectorWrite::Insert { row, .. } | ConnectorWrite::Update { row, .. } => row,
        };
        let row = self.connectors.replaced(caller, row)?;
        Ok(Pushed { row, created })
    }

    /// The dev package of `row`: the zip's bytes and its file name.
    pub async fn dev_package(
        &self,
        caller: &Caller,
        row: &ConnectorRow,
        ask: &DevPackageAsk,
    ) -> Refused<(Vec<u8>, String)> {
        let version = match ask.version.as_deref() {
            None | Some("live") => row.live_version.ok_or_else(|| {
                Refusal::conflict(
                    "no_live_script",
                    "the connector has no live SQL script; ask for ?version=draft or publish first",
                )
            })?,
            Some("draft") => row.draft_version,
            Some(other) => {
                return Err(Refusal::invalid(
                    "validation_failed",
                    format!("version is `live` or `draft`, not `{other}`"),
                    vec![],
                ));
            }
        };
        self.build(caller, row, version, ask).await
    }

    /// Refuses (403) a push by a key limited to some connectors that would
    /// reach further than its connector: create the connector, an object or a
    /// plugin version the workspace does not have yet.
    fn within_reach(&self, caller: &Caller, package: &Package, exists: bool) -> Refused<()> {
        if !exists {
            return Err(Refusal::forbidden(
                "this key is limited to some connectors; this needs a key of the whole workspace",
            ));
        }
        let known = self.db.object_defs(&caller.workspace_id)?;
        if let Some(objects) = &package.objects
            && let Some(def) = objects.objects.iter().find(|d| known.get(&d.name).is_none())
        {
            return Err(Refusal::forbidden(format!(
                "object `{}` does not exist, and a key limited to some connectors cannot create objects",
                def.name
            )));
        }
        for t in &package.connector.transforms {
            let plugin = t.plugin.value().map_err(Refusal::internal)?;
            if self.db.plugin_by_ref(&caller.workspace_id, plugin)?.is_none() {
                return Err(Refusal::forbidden(format!(
                    "plugin {} is not published, and a key limited to some connectors cannot publish plugins",
                    t.plugin
                )));
            }
        }
        Ok(())
    }

    /// The component the package brings for a transform's `plugin` reference,
    /// checked, when the workspace does not have it yet; refused when neither
    /// has it.
    async fn plugin_to_publish(
        &self,
        caller: &Caller,
        package: &Package,
        reference: &Written<PluginRef>,
    ) -> Refused<Option<(PluginRow, Vec<u8>)>> {
        let plugin = reference.value().map_err(Refusal::internal)?.clone();
        let known = self.db.plugin_by_ref(&caller.workspace_id, &plugin)?;
        let PluginRef::Named { name, version } = plugin else {
            return match known {
                Some(_) => Ok(None),
                None => Err(Refusal::invalid(
                    "invalid_package",
                    format!(
                        "plugin {reference} is not published in this workspace; refer to it by name@version to publish it with the package"
                    ),
                    vec![],
                )),
            };
        };
        let file = ["-", "@"]
            .iter()
            .map(|sep| package.dir.join("plugins").join(format!("{name}{sep}{version}.wasm")))
            .find(|p| p.is_file());
        let Some(file) = file else {
            return match known {
                Some(_) => Ok(None),
                None => Err(Refusal::invalid(
                    "invalid_package",
                    format!(
                        "the package has no plugins/{name}-{version}.wasm, and the workspace has no {name}@{version}"
                    ),
                    vec![],
                )),
            };
        };
        let bytes = tokio::fs::read(&file).await.map_err(Refusal::internal)?;
        match self
            .plugins
            .check(&caller.workspace_id, name.to_string(), version.to_string(), bytes)
            .await?
        {
            Checked::Published(_) => Ok(None),
            Checked::New(row, wasm) => Ok(Some((row, wasm))),
        }
    }

    /// The zip's bytes and its file name.
    async fn build(
        &self,
        caller: &Caller,
        row: &ConnectorRow,
        version: u32,
        ask: &DevPackageAsk,
    ) -> Refused<(Vec<u8>, String)> {
        let source_file_id = ask.source_file_id.clone();
        let mut connector = row.connector.clone();
        let script = self
            .db
            .sql_version(&row.id, version)?
            .ok_or_else(|| Refusal::internal("a SQL version is missing"))?;
        connector.sql = SqlSource {
            file: Some("script.sql".into()),
            text: None,
        };
        let named = source_file_id.is_some();
        let file_id = source_file_id.or_else(|| row.sample_file_id.clone());
        let file = match &file_id {
            Some(id) => {
                let mut file = self
                    .files
                    .reached(caller, id)?
                    .ok_or_else(|| Refusal::invalid("unknown_file", format!("there is no file `{id}`"), vec![]))?;
                // Files are stored by content, under the name they first came
                // with; an execution's input keeps the name it was sent under,
                // which is what its script read it as (`input.<name>`).
                if named && let Some(name) = self.db.input_name_of(&row.id, id)? {
                    file.name = name;
                }
                Some(file)
            }
            None => None,
        };

        // The names of the secrets its sources need; never their values.
        let secrets = weir_engine::sources::secrets_needed(&connector.sources);
        let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        files.insert(
            "connector.toml".into(),
            connector.to_toml().map_err(Refusal::internal)?.into_bytes(),
        );
        files.insert("script.sql".into(), script.text.into_bytes());
        let objects = self.objects_of(&caller.workspace_id, &connector)?;
        if !objects.objects.is_empty() {
            let text = toml::to_string_pretty(&objects).map_err(Refusal::internal)?;
            files.insert("objects.toml".into(), text.into_bytes());
        }
        if ask.records {
            let max = self.settings.package_records_max;
            let loaded: Vec<_> = objects
                .objects
                .iter()
                .filter(|o| connector.loads.iter().any(|l| l.object == o.name))
                .cloned()
                .collect();
            let (records, workspace, wanted) = (self.records.clone(), caller.workspace_id.clone(), loaded.clone());
            let snapshot = tokio::task::spawn_blocking(move || {
                weir_engine::snapshot::take(records.as_ref(), &workspace, &wanted, max)
            })
            .await
            .map_err(Refusal::internal)?
            .map_err(Refusal::internal)?;
            let snapshot = snapshot.ok_or_else(|| {
                Refusal::invalid(
                    "records_too_large",
                    format!(
                        "the records of {} come to more than package_records_max ({}); \
                             download the package without ?records=true",
                        loaded
                            .iter()
                            .map(|o| format!("`{}`", o.name))
                            .collect::<Vec<_>>()
                            .join(", "),
                        bytesize::ByteSize::b(max).display().iec()
                    ),
                    vec![],
                )
            })?;
            files.extend(snapshot);
        }
        for t in &connector.transforms {
            let plugin = t.plugin.value().map_err(Refusal::internal)?;
            let stored = self.db.plugin_by_ref(&caller.workspace_id, plugin)?.ok_or_else(|| {
                Refusal::conflict(
                    "unknown_plugin",
                    format!("transform plugin {plugin} is not published in this workspace"),
                )
            })?;
            let bytes = self.blobs.read(&stored.sha256).await.map_err(Refusal::internal)?;
            files.insert(
                format!("plugins/{}-{}.wasm", stored.name, stored.version),
                bytes.to_vec(),
            );
        }
        if let Some(file) = &file {
            let bytes = self.blobs.read(&file.sha256).await.map_err(Refusal::internal)?;
            files.insert(format!("data/{}", file.name), bytes.to_vec());
        }
        files.insert(
            "README.md".into(),
            readme(
                &row.api_name,
                file.as_ref().map(|f| f.name.as_str()),
                ask.records,
                &secrets,
            )
            .into_bytes(),
        );

        let hashes: BTreeMap<&str, String> = files
            .iter()
            .map(|(name, bytes)| (name.as_str(), hex::encode(Sha256::digest(bytes))))
            .collect();
        let manifest = serde_json::json!({
            "format": FORMAT,
            "engine_version": env!("CARGO_PKG_VERSION"),
            "connector": {"id": row.id, "api_name": row.api_name, "version": version},
            "source_file": file.as_ref().map(|f| serde_json::json!({"id": f.sha256, "name": f.name, "sha256": f.sha256})),
            "files": hashes,
            "secrets": secrets,
            "created_at": chrono::Utc::now().to_rfc3339(),
        });
        let manifest = serde_json::to_vec_pretty(&manifest).map_err(Refusal::internal)?;

        let bytes = tokio::task::spawn_blocking(move || zip_package(&manifest, &files))
            .await
            .map_err(Refusal::internal)?
            .map_err(Refusal::internal)?;
        Ok((bytes, format!("{}-v{version}.zip", row.api_name)))
    }

    /// The objects the connector's load steps write to, with the objects their
    /// relation fields point to.
    fn objects_of(&self, workspace_id: &str, connector: &Connector) -> Refused<Objects> {
        let all = self.db.object_defs(workspace_id)?;
        let wanted = super::objects::used_by(&all, [connector]);
        Ok(Objects {
            objects: all.objects.into_iter().filter(|o| wanted.contains(&o.name)).collect(),
        })
    }
}

/// The package's zip: its manifest, then its files.
fn zip_package(manifest: &[u8], files: &BTreeMap<String, Vec<u8>>) -> zip::result::ZipResult<Vec<u8>> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, bytes) in
        std::iter::once(("manifest.json", manifest)).chain(files.iter().map(|(n, b)| (n.as_str(), b.as_slice())))
    {
        zip.start_file(name, options)?;
        zip.write_all(bytes)?;
    }
    Ok(zip.finish()?.into_inner())
}

fn readme(api_name: &str, data: Option<&str>, records: bool, secrets: &[String]) -> String {
    let input = data.map_or_else(String::new, |d| format!(" (its input is data/{d})"));
    let secrets = if secrets.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = secrets
            .iter()
            .map(|s| format!("`{s}` (`{}`)", weir_engine::sources::secret_variable(s)))
            .collect();
        format!(
            "Its sources need the secrets {}: set those variables, or pass `--secrets FILE` with one\n\
             `name = \"value\"` line each. The package holds their names, never their values.\n\n",
            list.join(", ")
        )
    };
    let counts = if records {
        "`records/` holds the records its load steps match against, as the server had them: the first\n\
         run imports them into the store, so it counts the creates and updates the server would.\n"
    } else {
        "The package carries no records: a load step finds none of the server's, so a local run counts\n\
         creates where the server would count updates (and skips `do_not_upload` rules would not).\n\
         Download it with `?records=true` to carry them.\n"
    };
    format!(
        "# {api_name}: dev package\n\n\
         Runs locally with the same engine as the server{input}:\n\n\
         ```sh\n\
         weir run {api_name}.zip --out out           # or: unzip it and run the directory\n\
         weir run . --input other.csv --dry-run      # another input, nothing written\n\
         ```\n\n\
         {secrets}\
         `out/output/<scope>.csv`, `out/report.xlsx` and `out/rejected.csv` are what the server\n\
         writes for the same input; load steps write to `out/records.db` (`--db` for another).\n\
         {counts}\
         Edit `script.sql`, then `weir package push` sends it back as the connector's draft.\n"
    )
}
