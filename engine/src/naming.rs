//! Normalisation of header and table names (SPEC §3.2).
//!
//! Lower case; characters outside `[a-z0-9_]` become `_`; a leading digit
//! gets a `_` prefix; empty headers become `_1`, `_2`, … (numbered by
//! position among the empty ones); duplicates get `__2`, `__3`, … This
//! module only computes names; it never looks at data.

use std::collections::HashSet;

/// Normalises one name (a header or a file stem). Returns an empty string
/// for an empty input; [`normalise_headers`] numbers those.
pub fn normalise(raw: &str) -> String {
    let trimmed = raw.trim().trim_start_matches('\u{feff}');
    let mut out = String::with_capacity(trimmed.len() + 1);
    for c in trimmed.chars().flat_map(char::to_lowercase) {
        out.push(if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' {
            c
        } else {
            '_'
        });
    }
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// The column input tables end with: the line each row starts on in its
/// file. It is the engine's: a header of a file that normalises to it is
/// numbered like a duplicate (`_line__2`).
pub const LINE_COLUMN: &str = "_line";

/// Normalises a whole header row: every rule of §3.2, including numbering
/// empty headers and suffixing duplicates (of each other and of
/// [`LINE_COLUMN`]).
pub fn normalise_headers<S: AsRef<str>>(raw: &[S]) -> Vec<String> {
    let mut empty = 0;
    let names: Vec<String> = std::iter::once(LINE_COLUMN.to_string())
        .chain(raw.iter().map(|h| {
            let n = normalise(h.as_ref());
            if n.is_empty() {
                empty += 1;
                format!("_{empty}")
            } else {
                n
            }
        }))
        .collect();
    dedupe(names).into_iter().skip(1).collect()
}

/// Suffixes duplicates with `__2`, `__3`, … keeping the first as is, and
/// never producing a name that is already taken.
pub fn dedupe(names: Vec<String>) -> Vec<String> {
    let mut taken: HashSet<String> = HashSet::with_capacity(names.len());
    let originals: HashSet<String> = names.iter().cloned().collect();
    names
        .into_iter()
        .map(|name| {
            if taken.insert(name.clone()) {
                return name;
            }
            let mut n = 2;
            loop {
                let candidate = format!("{name}__{n}");
                if !originals.contains(&candidate) && taken.insert(candidate.clone()) {
                    return candidate;
                }
                n += 1;
            }
        })
        .collect()
}

/// The table name of an input file: its normalised stem (`Contacts 2024.csv`
/// → `contacts_2024`); `data` when nothing is left.
pub fn table_name(file_name: &str) -> String {
    let base = file_name.rsplit(['/', '\\']).next().unwrap_or(file_name);
    let stem = match base.rfind('.') {
        Some(i) if i > 0 => &base[..i],
        _ => base,
    };
    let n = normalise(stem);
    if n.is_empty() { "data".into() } else { n }
}

#[cfg(test)]
mod tests {

    #[test]
    fn no_header_takes_the_line_column() {
        assert_eq!(
            normalise_headers(&["_line", "a", "#Line"]),
            ["_line__2", "a", "_line__3"]
        );
    }

    use super::*;

    #[test]
    fn every_header_rule() {
        let raw = [
            "First Name",
            "E-mail",
            "",
            "2nd phone",
            "first name",
            " ",
            "ÄÖ",
            "first_name__2",
            "\u{feff}id",
        ];
        assert_eq!(
            normalise_headers(&raw),
            vec![
                "first_name",
                "e_mail",
                "_1",
                "_2nd_phone",
                "first_name__3",
                "_2",
                "__",
                "first_name__2",
                "id",
            ]
        );
    }

    #[test]
    fn duplicates_are_numbered_from_two() {
        assert_eq!(normalise_headers(&["a", "A", "a"]), vec!["a", "a__2", "a__3"]);
    }

    #[test]
    fn table_names_come_from_the_file_stem() {
        assert_eq!(table_name("Contacts 2024.csv"), "contacts_2024");
        assert_eq!(table_name("dir/2024-orders.JSONL"), "_2024_orders");
        assert_eq!(table_name(".csv"), "_csv");
        assert_eq!(table_name("---"), "___");
        assert_eq!(table_name("noext"), "noext");
    }
}
