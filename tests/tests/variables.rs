//! Variables through the engine: typed values, invalid rows in the report
//! and in rejected.csv, and the execution document's counts.

use weir_tests::{PASS_THROUGH, connector, run};

const CONTACTS: &str = "\
email,phone,born,joined_at,score,vip,ref,tags
ada@example.com,(202) 555-0143,03/15/1985,2024-01-02T10:00:00+02:00,1.5,yes,6f1c2a0e-8d6b-4a53-9d67-2a1f4c3b9e10,a;b
bad-email,+44 20 7946 0958,12/01/1990,2024-01-03 09:00:00,2,no,not-a-uuid,c
grace@example.com,12,13/45/1990,yesterday,x,maybe,,
,(202) 555-0199,01/01/2000,2024-01-04,3,yes,,
";

fn variables() -> String {
    let mut s = String::from("[parameters]\ndefault_country = \"US\"\n");
    for (name, column, kind, extra) in [
        ("email", "email", "email", "required = true"),
        ("phone", "phone", "phone_number", ""),
        ("born", "born", "date", "input_format = \"%m/%d/%Y\""),
        ("joined_at", "joined_at", "datetime", ""),
        ("score", "score", "number", ""),
        ("vip", "vip", "boolean", "input_format = \"yes_no\""),
        ("ref", "ref", "uuid", ""),
        ("tags", "tags", "string", "is_array = true\narray_delimiter = \";\""),
    ] {
        s.push_str(&format!(
            "[[variables]]\nname = \"{name}\"\nscope = \"rows\"\ncolumn = \"{column}\"\ntype = \"{kind}\"\n{extra}\n"
        ));
    }
    s
}

async fn run_contacts() -> weir_tests::Outcome {
    run(
        connector(&variables()),
        PASS_THROUGH,
        "contacts.csv",
        CONTACTS.as_bytes(),
    )
    .await
}

#[tokio::test]
async fn invalid_rows_are_counted_and_reported_with_reasons() {
    let o = run_contacts().await;
    assert_eq!(o.status(), "partial_success", "{:?}", o.doc.error);
    let doc = o.json();
    let vars = &doc["step_progress"][3];
    assert_eq!(vars["stage"], "variables");
    assert_eq!(vars["scopes"][0]["total"], 4);
    assert_eq!(vars["scopes"][0]["valid"], 1);
    assert_eq!(vars["scopes"][0]["invalid"], 3);
    // The SQL output keeps every row; rejected.csv has the invalid ones.
    assert_eq!(o.output("rows").lines().count(), 5);
    let rejected = o.rejected();
    assert_eq!(rejected.len(), 3);
    assert_eq!(&rejected[0][0], "variables");
    assert_eq!(&rejected[0][1], "rows");
    assert_eq!(&rejected[0][2], "2");
    // Each at its line in the uploaded file (the header is line 1).
    let lines: Vec<&str> = rejected.iter().map(|r| &r[3]).collect();
    assert_eq!(lines, ["3", "4", "5"]);
    let reasons = &rejected[0][4];
    // What is wrong with which value first; the variable after.
    assert!(
        reasons.starts_with("`bad-email` is not a valid e-mail address (variable `email`)"),
        "{reasons}"
    );
    assert!(reasons.contains("email") && reasons.contains("bad-email"), "{reasons}");
    assert!(reasons.contains("ref") && reasons.contains("not-a-uuid"), "{reasons}");
    let reasons = &rejected[1][4];
    for part in ["phone", "born", "joined_at", "score", "vip"] {
        assert!(reasons.contains(part), "{part} missing in {reasons}");
    }
    assert!(rejected[2][4].contains("required"), "{}", &rejected[2][4]);
    // The row's values travel with it.
    let values: serde_json::Value = serde_json::from_str(&rejected[0][5]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(values["email"], "bad-email");
    assert!(values.get("_line").is_none(), "the line is not a value: {values}");
    // ...and each value has a column of its own, for a spreadsheet.
    let text = weir_tests::read(&o.out.path().join("rejected.csv"));
    assert!(
        text.starts_with(
            "\u{feff}stage,source,row,line,reasons,values,email,phone,born,joined_at,score,vip,ref,tags\n"
        ),
        "{text}"
    );
    assert_eq!(&rejected[0][6], "bad-email");
    assert_eq!(&rejected[0][12], "not-a-uuid");
    // The output of a scope does not carry the line.
    assert!(
        o.output("rows")
            .starts_with("email,phone,born,joined_at,score,vip,ref,tags\n")
    );
}

#[tokio::test]
async fn a_rejected_row_is_found_at_its_line_in_the_file() {
    // A CRLF file with a quoted value over two lines before the bad row: the
    // bad row starts on line 4. The script filters and reorders, and keeps
    // the line as `_line`; a scope that leaves it out has no line.
    let file = "email,note\r\nok@x.io,\"two\r\nlines\"\r\nbad,x\r\nskip,y\r\nworse,z\r\n";
    let script = "CREATE VIEW output.kept AS SELECT _line, email FROM input.data WHERE email <> 'skip' ORDER BY email DESC;\n\
                  CREATE VIEW output.plain AS SELECT email FROM input.data WHERE email = 'bad'";
    let vars = "[[variables]]\nname = \"email\"\nscope = \"kept\"\ncolumn = \"email\"\ntype = \"email\"\n\
                [[variables]]\nname = \"plain\"\nscope = \"plain\"\ncolumn = \"email\"\ntype = \"email\"\n";
    let o = run(connector(vars), script, "people.csv", file.as_bytes()).await;
    assert_eq!(o.status(), "partial_success", "{:?}", o.doc.error);
    let found: Vec<(String, String, String)> = o
        .rejected()
        .iter()
        .map(|r| (r[1].to_string(), r[3].to_string(), r[6].to_string()))
        .collect();
    assert_eq!(
        found,
        [
            ("kept".to_string(), "6".to_string(), "worse".to_string()),
            ("kept".to_string(), "4".to_string(), "bad".to_string()),
            ("plain".to_string(), String::new(), "bad".to_string()),
        ]
    );
    assert_eq!(o.output("kept"), "email\nworse\nok@x.io\nbad\n");
}

#[tokio::test]
async fn the_report_has_a_summary_and_a_sheet_per_scope() {
    use calamine::Reader;
    let o = run_contacts().await;
    let path = o.out.path().join("report.xlsx");
    let mut wb: calamine::Xlsx<_> = calamine::open_workbook(&path).unwrap_or_else(|e| panic!("{e}"));
    let names = wb.sheet_names();
    assert_eq!(names.first().map(String::as_str), Some("Summary"));
    assert!(names.iter().any(|n| n == "rows"), "{names:?}");
    let sheet = wb.worksheet_range("rows").unwrap_or_else(|e| panic!("{e}"));
    let header: Vec<String> = sheet
        .rows()
        .next()
        .map(|r| r.iter().map(|c| c.to_string()).collect())
        .unwrap_or_default();
    // No column that would always be empty.
    assert_eq!(&header[..4], &["row", "line", "status", "errors"]);
    assert!(
        !header.iter().any(|h| h == "_line"),
        "the line is a column of its own: {header:?}"
    );
    assert!(!header.iter().any(|h| h == "warnings"), "{header:?}");
    assert_eq!(sheet.height(), 4, "header + 3 invalid rows");
    let summary = wb.worksheet_range("Summary").unwrap_or_else(|e| panic!("{e}"));
    let text: Vec<String> = summary.rows().flat_map(|r| r.iter().map(|c| c.to_string())).collect();
    assert!(text.iter().any(|t| t == "partial_success"), "{text:?}");
}

#[tokio::test]
async fn a_variable_of_a_missing_column_is_a_clear_error() {
    let extra = "[[variables]]\nname = \"email\"\nscope = \"rows\"\ncolumn = \"mail\"\ntype = \"email\"\n";
    let o = run(connector(extra), PASS_THROUGH, "contacts.csv", CONTACTS.as_bytes()).await;
    let e = o.doc.error.clone().unwrap_or_else(|| panic!("no error"));
    assert_eq!(e.code.as_str(), "invalid_connector");
    assert!(e.message.contains("variables[0].column"), "{}", e.message);
    assert!(e.message.contains("no column `mail`"), "{}", e.message);
}

#[tokio::test]
async fn valid_rows_give_success() {
    let csv = "email,n\nA@Example.COM,1\nb@example.org,2\n";
    let extra =
        "[[variables]]\nname = \"email\"\nscope = \"rows\"\ncolumn = \"email\"\ntype = \"email\"\nrequired = true\n";
    let o = run(connector(extra), PASS_THROUGH, "x.csv", csv.as_bytes()).await;
    assert_eq!(o.status(), "success", "{:?}", o.doc.error);
    assert!(o.rejected().is_empty());
}
