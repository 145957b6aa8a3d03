//! Loading a connector for a local run: a dev-package zip or a hand-made
//! directory (`connector.toml`, `script.sql`, `data/`).
//!
//! Unpacking refuses path traversal, absolute paths, links, and archives
//! that unpack past a size or entry limit, and writes nothing outside its
//! private directory. This module reads packages; it does not run them.

use std::fs::File;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use crate::connector::Connector;
use crate::document;
use crate::error::{Error, Problem, Result};
use crate::objects::Objects;
use crate::pipeline::InputFile;

/// Most bytes a package may unpack to.
pub const MAX_UNPACKED_BYTES: u64 = 4 * 1024 * 1024 * 1024;
/// Most entries a package may have.
pub const MAX_ENTRIES: usize = 10_000;

/// A loaded connector package.
#[derive(Debug)]
pub struct Package {
    /// The directory the package's files are in.
    pub dir: PathBuf,
    /// The connector definition.
    pub connector: Connector,
    /// The SQL script text.
    pub script: String,
    /// The input file under `data/`, when there is exactly one.
    pub data_file: Option<InputFile>,
    /// `objects.toml`: the objects its load steps write to, when present.
    pub objects: Option<Objects>,
    /// `manifest.json`, when the package has one.
    pub manifest: Option<serde_json::Value>,
    _unpacked: Option<tempfile::TempDir>,
}

/// Problems of one of the package's files, named by it.
fn in_file(file: &str, problems: Vec<Problem>) -> Vec<Problem> {
    problems.into_iter().map(|p| p.in_file(file)).collect()
}

fn problem(path: &str, message: impl Into<String>) -> Error {
    Error::InvalidConnector(vec![Problem::new(path, message)])
}

impl Package {
    /// Loads a package from a directory or a zip file.
    pub fn load(path: &Path) -> Result<Self> {
        Self::load_limited(path, MAX_UNPACKED_BYTES)
    }

    /// Loads a package; a zip may unpack to at most `max_unpacked` bytes.
    pub fn load_limited(path: &Path, max_unpacked: u64) -> Result<Self> {
        if path.is_dir() {
            return Self::from_dir(path.to_path_buf(), None);
        }
        let tmp = tempfile::Builder::new()
            .prefix("weir-package-")
            .tempdir()
            .map_err(|e| Error::io("creating a directory to unpack the package into", e))?;
        unpack_limited(path, tmp.path(), max_unpacked)?;
        let dir = tmp.path().to_path_buf();
        Self::from_dir(dir, Some(tmp))
    }

    fn from_dir(dir: PathBuf, unpacked: Option<tempfile::TempDir>) -> Result<Self> {
        let read = |name: &str| -> Result<String> {
            let p = dir.join(name);
            std::fs::read_to_string(&p).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => problem(name, format!("the package has no {name}")),
                _ => Error::io(format!("reading {name}"), e),
            })
        };
        // Every problem of the connector at once: its own, and those of its
        // load steps against objects.toml, even when it has unknown keys.
        let connector_text = read("connector.toml")?;
        let parsed = Connector::parse_toml(&connector_text);
        let objects = match std::fs::read_to_string(dir.join("objects.toml")) {
            Ok(text) => Some(Objects::from_toml(&text).map_err(|e| match e {
                Error::InvalidObjects(problems) => Error::InvalidObjects(in_file("objects.toml", problems)),
                other => other,
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io("reading objects.toml", e)),
        };
        let mut problems = parsed.problems;
        if let (Some(connector), Some(objects)) = (&parsed.document, &objects) {
            let mut loads = objects.check_loads(connector);
            document::place_in_toml(&connector_text, &mut loads);
            problems.extend(loads);
        }
        let connector = match parsed.document {
            Some(connector) if problems.is_empty() => connector,
            _ => return Err(Error::InvalidConnector(in_file("connector.toml", problems))),
        };
        let script = match (&connector.sql.text, &connector.sql.file) {
            (Some(text), _) => text.clone(),
            (None, file) => {
                let file = file.clone().unwrap_or_else(|| "script.sql".into());
                if !is_relative_inside(Path::new(&file)) {
                    return Err(problem(
                        "connector.toml: sql.file",
                        format!("`{file}` must be a relative path inside the package"),
                    ));
                }
                read(&file)?
            }
        };
        let manifest = match std::fs::read_to_string(dir.join("manifest.json")) {
            Ok(text) => Some(
                serde_json::from_str(&text).map_err(|e| problem("manifest.json", format!("not valid JSON: {e}")))?,
            ),
            Err(_) => None,
        };
        let data_file = data_file(&dir)?;
        Ok(Self {
            dir,
            connector,
            script,
            data_file,
            objects,
            manifest,
            _unpacked: unpacked,
        })
    }
}

/// The one file under `data/`; `None` when there is none; an error when
/// there are several (the caller must say which with `--input`).
fn data_file(dir: &Path) -> Result<Option<InputFile>> {
    let data = dir.join("data");
    let Ok(entries) = std::fs::read_dir(&data) else {
        return Ok(None);
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file() && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .collect();
    files.sort();
    match files.len() {
        0 => Ok(None),
        1 => {
            let path = files.remove(0);
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            Ok(Some(InputFile { path, name }))
        }
        n => Err(problem(
            "data",
            format!("the package has {n} files under data/; choose one with --input"),
        )),
    }
}

fn is_relative_inside(path: &Path) -> bool {
    path.components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// Unpacks a zip into `dir` safely.
pub fn unpack(zip_path: &Path, dir: &Path) -> Result<()> {
    unpack_limited(zip_path, dir, MAX_UNPACKED_BYTES)
}

/// Unpacks a zip into `dir` safely, to at most `max_unpacked` bytes.
pub fn unpack_limited(zip_path: &Path, dir: &Path, max_unpacked: u64) -> Result<()> {
    let name = zip_path.display().to_string();
    let file = File::open(zip_path).map_err(|e| Error::io(format!("opening {name}"), e))?;
    let mut archive = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| problem("package", format!("`{name}` is not a readable zip: {e}")))?;
    if archive.len() > MAX_ENTRIES {
        return Err(problem(
            "package",
            format!("the package has more than {MAX_ENTRIES} entries"),
        ));
    }
    let mut total = 0u64;
    for i in 0..archive.len() {
        let mut entry = archive
            .by_index(i)
            .map_err(|e| problem("package", format!("entry {i} cannot be read: {e}")))?;
        let raw_name = entry
            .name()
            .map(|n| n.to_string())
            .unwrap_or_else(|_| format!("entry {i}"));
        if entry.is_symlink() {
            return Err(problem(&raw_name, "links are not allowed in a package"));
        }
        let escapes = raw_name.starts_with(['/', '\\'])
            || raw_name.contains(':')
            || raw_name.split(['/', '\\']).any(|part| part == "..");
        let relative = match entry.enclosed_name() {
            Some(p) if !escapes && is_relative_inside(&p) => p,
            _ => {
                return Err(problem(
                    &raw_name,
                    "the path leaves the package directory (absolute or `..`)",
                ));
            }
        };
        let target = dir.join(&relative);
        if entry.is_dir() {
            std::fs::create_dir_all(&target).map_err(|e| Error::io(format!("unpacking {raw_name}"), e))?;
            continue;
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(format!("unpacking {raw_name}"), e))?;
        }
        let mut out = File::create(&target).map_err(|e| Error::io(format!("unpacking {raw_name}"), e))?;
        let budget = max_unpacked.saturating_sub(total);
        let written = std::io::copy(&mut (&mut entry).take(budget + 1), &mut out)
            .map_err(|e| problem(&raw_name, format!("cannot be unpacked: {e}")))?;
        total += written;
        if total > max_unpacked {
            return Err(problem(
                "package",
                format!("the package unpacks to more than {max_unpacked} bytes (a zip bomb?)"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn zip_with(entries: &[(&str, &[u8])]) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap_or_else(|e| panic!("{e}"));
        let mut w = zip::ZipWriter::new(file.reopen().unwrap_or_else(|e| panic!("{e}")));
        for (name, data) in entries {
            w.start_file(*name, zip::write::SimpleFileOptions::default())
                .unwrap_or_else(|e| panic!("{e}"));
            w.write_all(data).unwrap_or_else(|e| panic!("{e}"));
        }
        w.finish().unwrap_or_else(|e| panic!("{e}"));
        file
    }

    #[test]
    fn path_traversal_is_refused_and_nothing_is_written_outside() {
        let outer = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let target = outer.path().join("pkg");
        std::fs::create_dir(&target).unwrap_or_else(|e| panic!("{e}"));
        for evil in ["../escape.txt", "/etc/weir-escape", "a/../../escape2.txt"] {
            let z = zip_with(&[(evil, b"x")]);
            let err = unpack(z.path(), &target).expect_err("refused");
            assert!(err.to_string().contains("leaves the package"), "{err}");
        }
        assert!(!outer.path().join("escape.txt").exists());
        assert!(!outer.path().join("escape2.txt").exists());
    }

    #[test]
    fn a_hand_made_directory_loads() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(
            dir.path().join("connector.toml"),
            "api_name = \"x\"\ntype = \"spreadsheet\"\n[sql]\nfile = \"script.sql\"\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join("script.sql"), "CREATE VIEW output.a AS SELECT 1")
            .unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir(dir.path().join("data")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join("data/in.csv"), "a\n1\n").unwrap_or_else(|e| panic!("{e}"));
        let p = Package::load(dir.path()).expect("loads");
        assert_eq!(p.connector.api_name, "x");
        assert_eq!(p.data_file.map(|d| d.name), Some("in.csv".to_string()));
    }

    #[test]
    fn objects_toml_is_read_and_load_steps_checked_against_it() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let connector = "api_name = \"x\"\ntype = \"spreadsheet\"\n\
            [[variables]]\nname = \"email\"\nscope = \"a\"\ncolumn = \"email\"\ntype = \"email\"\n\
            [[loads]]\norder = 1\nscope = \"a\"\nobject = \"contact\"\n\
            [[loads.fields]]\nfield = \"mail\"\nvariables = [\"email\"]\n";
        std::fs::write(dir.path().join("connector.toml"), connector).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join("script.sql"), "CREATE VIEW output.a AS SELECT 1")
            .unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(
            dir.path().join("objects.toml"),
            "[[objects]]\nname = \"contact\"\n[[objects.fields]]\nname = \"email\"\ntype = \"email\"\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let err = Package::load(dir.path()).expect_err("unknown field");
        assert!(
            err.to_string().contains("connector.toml:13:1: loads[0].fields[0].field: object `contact` has no field `mail`; did you mean `email`?"),
            "{err}"
        );
        std::fs::write(dir.path().join("objects.toml"), "[[objects]]\nname = \"Contact\"\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let err = Package::load(dir.path()).expect_err("bad object");
        assert!(err.to_string().contains("objects.toml:2:1: objects[0].name"), "{err}");
    }

    #[test]
    fn missing_files_are_named() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let err = Package::load(dir.path()).expect_err("no connector.toml");
        assert!(err.to_string().contains("connector.toml"), "{err}");
    }
}
