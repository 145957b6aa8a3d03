//! The two artifacts a person reads after a run (SPEC §3.7, "Report"):
//! `rejected.csv` and `report.xlsx`.
//!
//! [`RejectedWriter`] streams every row that did not make it (invalid at
//! intake, rejected by a transform, invalid variables, not loaded) to
//! `rejected.csv` as the run goes. [`ReportBuilder`] collects, per scope or
//! input table, a bounded number of rows with their status and errors,
//! and writes `report.xlsx` at the end with a summary sheet drawn
//! from the [`Execution`] document.
//!
//! This module only presents: it must not decide whether a row is valid,
//! compute the run's counts (it reads them from the execution document), or
//! touch the SQL output CSVs (that is [`crate::output`]).

mod rejected;
mod workbook;

pub(crate) use rejected::RowValues;
pub use rejected::{RejectedRow, RejectedWriter};
pub use workbook::ReportBuilder;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};
use datafusion::arrow::array::{Array, RecordBatch};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use rust_xlsxwriter::{ColNum, Format, RowNum, Workbook, Worksheet, XlsxError};
use serde::Serialize;

use crate::error::{Error, Result, Stage};
use crate::execution::{Execution, StepProgress};

fn create_parent(path: &Path) -> Result<()> {
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => std::fs::create_dir_all(parent)
            .map_err(|e| Error::io(format!("creating directory {}", parent.display()), e)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::rejected::*;
    use super::workbook::*;
    use super::*;

    use std::io::Read as _;

    use calamine::{Data, Reader as _, Xlsx, open_workbook};

    use crate::error::ErrorCode;
    use crate::execution::{
        ConnectorRef, ExecutionError, LoadCount, StageStatus, Status, TableCount, TriggerType, VariableCount,
    };

    type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn values(items: &[(&str, Option<&str>)]) -> Vec<(String, Option<String>)> {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
            .collect()
    }

    #[test]
    fn rejected_csv_has_one_line_per_row_with_reasons_and_json_values() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("out").join("rejected.csv");
        let mut writer = RejectedWriter::create(&path)?;
        writer.write(&RejectedRow {
            stage: Stage::Intake,
            source: "contacts".into(),
            row: 5,
            line: Some(6),
            reasons: strings(&["expected 3 fields, found 4", "bad quoting"]),
            values: values(&[("name", Some("Ann, \"A\"")), ("age", None)]),
            failed: false,
        })?;
        writer.write(&RejectedRow {
            stage: Stage::Variables,
            source: "people".into(),
            row: 2,
            line: None,
            reasons: strings(&["email: `x` is not a valid e-mail address"]),
            values: values(&[("email", Some("x")), ("zip", Some("01234"))]),
            failed: false,
        })?;
        assert_eq!(writer.count(), 2);
        writer.finish()?;

        // A spreadsheet reads it as UTF-8 and finds each value in a column
        // of its own after the fixed ones.
        let text = std::fs::read_to_string(&path)?;
        assert!(
            text.starts_with("\u{feff}stage,source,row,line,reasons,values,name,age,email,zip\n"),
            "{text}"
        );
        let mut reader = csv::Reader::from_path(&path)?;
        let mut header = REJECTED_HEADER.to_vec();
        header.extend(["name", "age", "email", "zip"]);
        assert_eq!(reader.headers()?.iter().collect::<Vec<_>>(), header);
        let records = reader.records().collect::<std::result::Result<Vec<_>, _>>()?;
        let records: Vec<Vec<&str>> = records.iter().map(|r| r.iter().collect()).collect();
        assert_eq!(
            records,
            [
                vec![
                    "intake",
                    "contacts",
                    "5",
                    "6",
                    "expected 3 fields, found 4; bad quoting",
                    r#"{"name":"Ann, \"A\"","age":null}"#,
                    "Ann, \"A\"",
                    "",
                    "",
                    "",
                ],
                vec![
                    "variables",
                    "people",
                    "2",
                    "",
                    "email: `x` is not a valid e-mail address",
                    r#"{"email":"x","zip":"01234"}"#,
                    "",
                    "",
                    "x",
                    "01234",
                ],
            ]
        );
        Ok(())
    }

    #[test]
    fn spread_values_are_never_formulas_and_never_take_a_fixed_column_name() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("rejected.csv");
        let mut writer = RejectedWriter::create(&path)?;
        writer.write(&RejectedRow {
            stage: Stage::Variables,
            source: "people".into(),
            row: 1,
            line: Some(2),
            reasons: strings(&["bad"]),
            values: values(&[
                ("source", Some("crm")),
                ("formula", Some("=HYPERLINK(\"http://x\")")),
                ("amount", Some("-12.5")),
                ("dash", Some("-x")),
            ]),
            failed: false,
        })?;
        writer.finish()?;
        let mut reader = csv::Reader::from_path(&path)?;
        let header: Vec<String> = reader.headers()?.iter().map(str::to_string).collect();
        assert_eq!(&header[6..], ["source (value)", "formula", "amount", "dash"]);
        let row = reader.records().next().ok_or("a row")??;
        assert_eq!(
            row.iter().skip(6).collect::<Vec<_>>(),
            ["crm", "'=HYPERLINK(\"http://x\")", "-12.5", "'-x"]
        );
        let json: serde_json::Value = serde_json::from_str(&row[5])?;
        assert_eq!(
            json["formula"], "=HYPERLINK(\"http://x\")",
            "the values column keeps it as it was"
        );
        Ok(())
    }

    #[test]
    fn rejected_csv_exists_with_its_header_when_nothing_was_rejected() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("rejected.csv");
        let writer = RejectedWriter::create(&path)?;
        assert_eq!(writer.count(), 0);
        writer.finish()?;
        assert_eq!(
            std::fs::read_to_string(&path)?,
            "\u{feff}stage,source,row,line,reasons,values\n"
        );
        Ok(())
    }

    fn execution() -> std::result::Result<Execution, Box<dyn std::error::Error>> {
        let mut exec = Execution::new(
            "exec-42".into(),
            ConnectorRef {
                id: None,
                api_name: "contacts_import".into(),
                version: Some(3),
            },
            TriggerType::FileUpload,
            false,
        );
        exec.transition(Status::Running)?;
        if let Some(StepProgress::Intake { status, tables }) = exec.stage_mut(Stage::Intake) {
            *status = StageStatus::Completed;
            tables.push(TableCount {
                table: "contacts".into(),
                rows: 4,
                invalid: 1,
            });
        }
        if let Some(StepProgress::Variables { status, scopes }) = exec.stage_mut(Stage::Variables) {
            *status = StageStatus::Completed;
            scopes.push(VariableCount {
                scope: "contacts".into(),
                total: 4,
                valid: 2,
                invalid: 2,
            });
        }
        if let Some(StepProgress::Load { status, steps }) = exec.stage_mut(Stage::Load) {
            *status = StageStatus::Failed;
            steps.push(LoadCount {
                order: 1,
                scope: "contacts".into(),
                object: "contact".into(),
                total: 2,
                created: 1,
                ..LoadCount::default()
            });
        }
        exec.error = Some(ExecutionError {
            stage: Stage::Load,
            code: ErrorCode::Io,
            message: "disk full".into(),
            line: None,
            column: None,
            plugin: None,
        });
        exec.transition(Status::Failed)?;
        Ok(exec)
    }

    fn report() -> ReportBuilder {
        let mut report = ReportBuilder::new(2).with_source_name(Some("contacts 2024.csv".into()));
        report.add_sheet("contacts", strings(&["name", "email", "zip", "age"]));
        report.numeric_columns("contacts", ["age"]);
        report.add_row(
            "contacts",
            "ok",
            &[],
            vec![
                Some("Ann".into()),
                Some("ann@example.com".into()),
                None,
                Some("42".into()),
            ],
        );
        report.add_rejected(&RejectedRow {
            stage: Stage::Variables,
            source: "contacts".into(),
            row: 2,
            line: Some(3),
            reasons: strings(&["email: `x` is not a valid e-mail address"]),
            values: values(&[
                ("name", Some("Bob")),
                ("email", Some("x")),
                ("zip", Some("94107")),
                ("age", Some("7")),
            ]),
            failed: false,
        });
        // The sheet is full: an ok row is left out...
        report.add_row("contacts", "ok", &[], vec![Some("Cy".into())]);
        // ...and a problem row takes the place of the kept ok row.
        report.add_rejected(&RejectedRow {
            stage: Stage::Variables,
            source: "contacts".into(),
            row: 4,
            line: None,
            reasons: strings(&["age: `abc` is not a number"]),
            values: values(&[("age", Some("abc")), ("name", Some("Dee"))]),
            failed: false,
        });
        report.add_rejected(&RejectedRow {
            stage: Stage::Intake,
            source: "Contacts 2024: [raw]".into(),
            row: 5,
            line: Some(6),
            reasons: strings(&["expected 1 field, found 2"]),
            values: values(&[("a", Some("1"))]),
            failed: false,
        });
        report.add_sheet("summary", strings(&["x"]));
        report.add_sheet("a_very_long_scope_name_that_goes_past_31_chars", strings(&["x"]));
        report.add_sheet("a_very_long_scope_name_that_goes_elsewhere", strings(&["x"]));
        report
    }

    const SHEETS: [&str; 6] = [
        "Summary",
        "contacts",
        "Contacts 2024_ _raw_",
        "summary_2",
        "a_very_long_scope_name_that_goe",
        "a_very_long_scope_name_that_g_2",
    ];

    fn zip_entry(path: &Path, name: &str) -> std::result::Result<String, Box<dyn std::error::Error>> {
        let mut archive = zip::ZipArchive::new(File::open(path)?)?;
        let mut text = String::new();
        archive.by_name(name)?.read_to_string(&mut text)?;
        Ok(text)
    }

    #[test]
    fn report_xlsx_lists_the_sheets_and_the_errors() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("out").join("report.xlsx");
        report().write(&execution()?, &path)?;

        let workbook = zip_entry(&path, "xl/workbook.xml")?;
        let names: Vec<&str> = workbook
            .split("<sheet name=\"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .collect();
        assert_eq!(names, SHEETS);
        let shared = zip_entry(&path, "xl/sharedStrings.xml")?;
        assert!(shared.contains("email: `x` is not a valid e-mail address"), "{shared}");
        assert!(shared.contains("disk full"), "{shared}");
        assert!(shared.contains(">94107<"), "zip code kept as text: {shared}");
        Ok(())
    }

    fn cell(range: &calamine::Range<Data>, row: u32, col: u32) -> Data {
        range.get_value((row, col)).cloned().unwrap_or(Data::Empty)
    }

    fn text(value: &str) -> Data {
        Data::String(value.to_string())
    }

    /// The first row of `range` whose cell in column `col` is `key`.
    fn row_with(range: &calamine::Range<Data>, col: usize, key: &str) -> Option<Vec<Data>> {
        range
            .rows()
            .find(|r| r.get(col) == Some(&text(key)))
            .map(|r| r.to_vec())
    }

    #[test]
    fn report_xlsx_reads_back_with_the_kept_rows_and_the_summary() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("report.xlsx");
        report().write(&execution()?, &path)?;
        let mut workbook: Xlsx<_> = open_workbook(&path)?;
        assert_eq!(workbook.sheet_names(), SHEETS);

        let contacts = workbook.worksheet_range("contacts")?;
        let header: Vec<Data> = (0..9).map(|c| cell(&contacts, 0, c)).collect();
        assert_eq!(
            header,
            ["row", "line", "status", "errors", "name", "email", "zip", "age"]
                .map(text)
                .into_iter()
                .chain([Data::Empty])
                .collect::<Vec<_>>(),
            "no column after the data's"
        );
        // Rows 2 and 4 are kept (both invalid); the ok rows 1 and 3 are not.
        let bob: Vec<Data> = (0..9).map(|c| cell(&contacts, 1, c)).collect();
        assert_eq!(
            bob,
            [
                Data::Float(2.0),
                Data::Float(3.0),
                text("invalid"),
                text("email: `x` is not a valid e-mail address"),
                text("Bob"),
                text("x"),
                text("94107"),
                Data::Float(7.0),
                Data::Empty,
            ]
        );
        let dee: Vec<Data> = (0..9).map(|c| cell(&contacts, 2, c)).collect();
        assert_eq!(
            dee,
            [
                Data::Float(4.0),
                Data::Empty,
                text("invalid"),
                text("age: `abc` is not a number"),
                text("Dee"),
                Data::Empty,
                Data::Empty,
                text("abc"),
                Data::Empty,
            ]
        );
        assert_eq!(cell(&contacts, 3, 0), Data::Empty);

        let raw = workbook.worksheet_range("Contacts 2024_ _raw_")?;
        assert_eq!(cell(&raw, 0, 4), text("a"));
        assert_eq!(cell(&raw, 1, 0), Data::Float(5.0));
        assert_eq!(cell(&raw, 1, 1), Data::Float(6.0), "the line in the file");
        // An input table's rows are text as they were read.
        assert_eq!(cell(&raw, 1, 4), text("1"));

        let summary = workbook.worksheet_range("Summary")?;
        assert_eq!(
            row_with(&summary, 0, "Execution").map(|r| r[1].clone()),
            Some(text("exec-42"))
        );
        assert_eq!(
            row_with(&summary, 0, "Status").map(|r| r[1].clone()),
            Some(text("failed"))
        );
        assert_eq!(
            row_with(&summary, 0, "Trigger").map(|r| r[1].clone()),
            Some(text("file_upload"))
        );
        assert_eq!(
            row_with(&summary, 0, "Source file").map(|r| r[1].clone()),
            Some(text("contacts 2024.csv")),
            "a person knows the file by its name"
        );
        assert_eq!(
            row_with(&summary, 0, "Connector version").map(|r| r[1].clone()),
            Some(Data::Float(3.0))
        );
        assert_eq!(
            row_with(&summary, 0, "Error code").map(|r| r[1].clone()),
            Some(text("io_error"))
        );
        assert_eq!(
            row_with(&summary, 0, "Error message").map(|r| r[1].clone()),
            Some(text("disk full"))
        );

        let variables = row_with(&summary, 0, "variables").ok_or("no variables line")?;
        assert_eq!(
            variables[1..7],
            [
                text("completed"),
                text("contacts"),
                Data::Float(4.0),
                Data::Empty,
                Data::Float(2.0),
                Data::Float(2.0),
            ]
        );
        let load = row_with(&summary, 0, "load").ok_or("no load line")?;
        assert_eq!(load[2], text("1. contacts → contact"));
        assert_eq!(load[8], Data::Float(1.0));
        let sql = row_with(&summary, 0, "sql").ok_or("no sql line")?;
        assert_eq!(sql[1], text("pending"));

        let contacts_line = row_with(&summary, 0, "contacts").ok_or("no sheet line")?;
        assert_eq!(contacts_line[2..4], [Data::Float(2.0), Data::Float(2.0)]);
        let Data::String(note) = &contacts_line[4] else {
            return Err(format!("no note: {:?}", contacts_line[4]).into());
        };
        assert!(note.contains("2 more rows are not shown, 0 of them"), "{note}");
        let raw_line = row_with(&summary, 0, "Contacts 2024_ _raw_").ok_or("no raw sheet line")?;
        assert_eq!(raw_line[1], text("Contacts 2024: [raw]"));
        assert_eq!(raw_line[3], Data::Float(0.0));
        Ok(())
    }

    #[test]
    fn a_row_that_failed_to_load_is_failed_as_the_summary_counts_it() {
        let row = |failed| RejectedRow {
            stage: Stage::Load,
            source: "people".into(),
            row: 1,
            line: None,
            reasons: strings(&["load 1 into contact: field stage: `x` is not one of Lead, Customer"]),
            values: values(&[("stage", Some("x"))]),
            failed,
        };
        assert_eq!(row(true).status(), "failed");
        assert_eq!(row(false).status(), "skipped");
    }

    #[test]
    fn only_plain_numbers_without_leading_zeros_become_numbers() {
        assert_eq!(as_number("42"), Some(42.0));
        assert_eq!(as_number("-3.5"), Some(-3.5));
        assert_eq!(as_number("0"), Some(0.0));
        assert_eq!(as_number("0.25"), Some(0.25));
        assert_eq!(as_number("01234"), None);
        assert_eq!(as_number("+33612345678"), None);
        assert_eq!(as_number("1e5"), None);
        assert_eq!(as_number("inf"), None);
        assert_eq!(as_number("NaN"), None);
        assert_eq!(as_number(".5"), None);
        assert_eq!(as_number("5."), None);
        assert_eq!(as_number(""), None);
        assert_eq!(as_number("1234567890123456"), None);
        assert_eq!(as_number("123456789012345"), Some(123_456_789_012_345.0));
    }

    #[test]
    fn a_sheet_lists_its_rows_by_row_number_whatever_stage_stopped_them() {
        let mut report = ReportBuilder::new(10);
        report.add_sheet("people", strings(&["email"]));
        for (row, stage) in [(5, Stage::Load), (2, Stage::Variables), (4, Stage::Transform)] {
            report.add_rejected(&RejectedRow {
                stage,
                source: "people".into(),
                row,
                line: None,
                reasons: strings(&["why"]),
                values: values(&[("email", Some("x"))]),
                failed: false,
            });
        }
        let numbers: Vec<u64> = report.sheets[0].rows().iter().map(|r| r.row).collect();
        assert_eq!(numbers, [2, 4, 5]);
    }

    #[test]
    fn sheet_names_are_valid_and_unique_for_excel() {
        assert_eq!(
            sheet_names(["a/b", "A/B", "'quoted'", "", "history", "x".repeat(40).as_str()]),
            [
                "a_b",
                "A_B_2",
                "_quoted_",
                "sheet",
                "history_2",
                "x".repeat(31).as_str()
            ]
        );
    }

    #[test]
    fn text_is_cut_on_utf16_units_and_char_boundaries() {
        assert_eq!(truncate_utf16("abc", 5), "abc");
        assert_eq!(truncate_utf16("héllo", 2), "hé");
        // An emoji is two UTF-16 units: it does not fit in one.
        assert_eq!(truncate_utf16("a😀b", 2), "a");
        assert_eq!(truncate_utf16("a😀b", 3), "a😀");
        let long = "é".repeat(MAX_CELL_TEXT + 10);
        assert_eq!(excel_text(&long).chars().count(), MAX_CELL_TEXT);
    }
}
