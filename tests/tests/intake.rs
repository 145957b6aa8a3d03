//! Intake through the engine: every input format, encodings and BOMs,
//! header rules, unreadable rows with their line numbers, unreadable files.

use std::io::Write;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use weir_tests::{PASS_THROUGH, connector, run};

const TYPED: &str = "CREATE VIEW output.rows AS SELECT *, arrow_typeof(id) AS id_type, arrow_typeof(zip) AS zip_type FROM input.data ORDER BY id";

#[tokio::test]
async fn csv_types_are_inferred_without_losing_information() {
    let csv = "id,zip,amount,active,day,note\n1,01234,1.5,true,2024-01-31,x\n2,98765,2,false,2024-02-29,\n";
    let o = run(connector(""), TYPED, "people.csv", csv.as_bytes()).await;
    assert_eq!(o.status(), "success", "{:?}", o.doc.error);
    assert_eq!(
        o.output("rows"),
        "id,zip,amount,active,day,note,id_type,zip_type\n\
         1,01234,1.5,true,2024-01-31,x,Int64,Utf8\n\
         2,98765,2,false,2024-02-29,,Int64,Utf8\n"
    );
}

#[tokio::test]
async fn infer_false_reads_every_column_as_text() {
    let csv = "id,zip\n1,01234\n";
    let o = run(connector("[input]\ninfer = false\n"), TYPED, "x.csv", csv.as_bytes()).await;
    assert_eq!(o.output("rows"), "id,zip,id_type,zip_type\n1,01234,Utf8,Utf8\n");
}

#[tokio::test]
async fn tsv_and_semicolon_csv_are_sniffed() {
    let o = run(connector(""), PASS_THROUGH, "x.tsv", b"a\tb\n1\tx y\n").await;
    assert_eq!(o.output("rows"), "a,b\n1,x y\n");
    let o = run(connector(""), PASS_THROUGH, "x.csv", b"a;b\n1;\"x;y\"\n").await;
    assert_eq!(o.output("rows"), "a,b\n1,x;y\n");
    let o = run(
        connector("[input]\nformat = \"csv\"\ndelimiter = \"|\"\n"),
        PASS_THROUGH,
        "x.txt",
        b"a|b\n1|2\n",
    )
    .await;
    assert_eq!(o.output("rows"), "a,b\n1,2\n");
}

#[tokio::test]
async fn header_names_are_normalised_and_the_file_names_the_table() {
    let csv = "\u{feff}First Name,E-mail,,2nd,first name,\nAda,a@x.io,p,q,r,s\n";
    let o = run(
        connector(""),
        "CREATE VIEW output.rows AS SELECT * FROM input.contacts_2024",
        "Contacts 2024.csv",
        csv.as_bytes(),
    )
    .await;
    assert_eq!(o.status(), "success", "{:?}", o.doc.error);
    assert_eq!(
        o.output("rows"),
        "first_name,e_mail,_1,_2nd,first_name__2,_2\nAda,a@x.io,p,q,r,s\n"
    );
    assert_eq!(o.json()["step_progress"][0]["tables"][0]["table"], "contacts_2024");
}

#[tokio::test]
async fn ragged_badly_quoted_and_invalid_utf8_rows_are_invalid_with_their_line() {
    let mut csv = b"id,name\n1,ok\n2,too,many\n3\n4,\"fine, quoted\"\n".to_vec();
    csv.extend_from_slice(b"5,bad\xff\xfe\n6,\"multi\nline\"\n7,Zo\xc3\xab\n8,\"bad\"quote,x\n");
    let o = run(connector(""), PASS_THROUGH, "x.csv", &csv).await;
    assert_eq!(o.status(), "partial_success", "{:?}", o.doc.error);
    assert_eq!(
        o.output("rows"),
        "id,name\n1,ok\n4,\"fine, quoted\"\n6,\"multi\nline\"\n7,Zoë\n"
    );
    let tables = &o.json()["step_progress"][0]["tables"][0];
    assert_eq!(tables["rows"], 4);
    assert_eq!(tables["invalid"], 4);
    let rejected = o.rejected();
    let reasons: Vec<(&str, &str)> = rejected.iter().map(|r| (&r[3], &r[4])).collect();
    assert_eq!(
        reasons,
        [
            ("3", "expected 2 fields, found 3"),
            ("4", "expected 2 fields, found 1"),
            ("6", "invalid UTF-8 in field 2"),
            ("10", "expected 2 fields, found 3"),
        ]
    );
    assert!(rejected.iter().all(|r| &r[0] == "intake"));

    // The same rows with CRLF line ends, and with a byte-order mark too:
    // every reason names the same physical line, as does the line column.
    let crlf: Vec<u8> = csv.split(|&b| b == b'\n').collect::<Vec<_>>().join(&b"\r\n"[..]);
    let with_bom = [&b"\xef\xbb\xbf"[..], &crlf].concat();
    for (label, file) in [("CRLF", &crlf), ("BOM + CRLF", &with_bom)] {
        let o = run(connector(""), PASS_THROUGH, "x.csv", file).await;
        let lines: Vec<String> = o.rejected().iter().map(|r| r[3].to_string()).collect();
        assert_eq!(lines, ["3", "4", "6", "10"], "{label}: {:?}", o.rejected());
    }

    // Empty lines are skipped; a row after them is on its own line.
    let csv = b"id,name\n\n1,ok\n\n\n2,too,many\n\r\n3\n";
    let o = run(connector(""), PASS_THROUGH, "x.csv", csv).await;
    assert_eq!(o.output("rows"), "id,name\n1,ok\n");
    let lines: Vec<String> = o.rejected().iter().map(|r| r[3].to_string()).collect();
    assert_eq!(lines, ["6", "8"], "{:?}", o.rejected());

    // Declared UTF-8: the bad bytes are a bad row even without other
    // non-ASCII text to tell the encoding by.
    let csv = b"id,name\n1,ok\n2,bad\xff\n3,fine\n";
    let o = run(connector("[input]\nencoding = \"utf-8\"\n"), PASS_THROUGH, "x.csv", csv).await;
    assert_eq!(o.output("rows"), "id,name\n1,ok\n3,fine\n");
    assert_eq!(
        (&o.rejected()[0][3], &o.rejected()[0][4]),
        ("3", "invalid UTF-8 in field 2")
    );
}

#[tokio::test]
async fn a_value_of_the_wrong_type_after_the_sample_makes_its_row_invalid() {
    let mut csv = String::from("n\n");
    for i in 0..1500 {
        csv.push_str(&format!("{i}\n"));
    }
    csv.push_str("not-a-number\n");
    let o = run(connector(""), PASS_THROUGH, "x.csv", csv.as_bytes()).await;
    assert_eq!(o.status(), "partial_success");
    let rejected = o.rejected();
    assert_eq!(rejected.len(), 1);
    assert_eq!(&rejected[0][3], "1502");
    assert_eq!(&rejected[0][4], "`not-a-number` is not an integer (column `n`)");
}

#[tokio::test]
async fn encodings_and_boms() {
    let text = "name,city\nJosé,Zürich\nFrançoise,Besançon\n";
    let expected = "name,city\nJosé,Zürich\nFrançoise,Besançon\n";
    // UTF-8 with BOM: the BOM never reaches the header.
    let mut bom = vec![0xef, 0xbb, 0xbf];
    bom.extend_from_slice(text.as_bytes());
    assert_eq!(
        run(connector(""), PASS_THROUGH, "a.csv", &bom).await.output("rows"),
        expected
    );
    // UTF-16 LE and BE with BOM.
    let mut le = vec![0xff, 0xfe];
    le.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
    assert_eq!(
        run(connector(""), PASS_THROUGH, "b.csv", &le).await.output("rows"),
        expected
    );
    let mut be = vec![0xfe, 0xff];
    be.extend(text.encode_utf16().flat_map(u16::to_be_bytes));
    assert_eq!(
        run(connector(""), PASS_THROUGH, "c.csv", &be).await.output("rows"),
        expected
    );
    // Windows-1252 without BOM, detected.
    let (cp1252, _, _) = encoding_rs::WINDOWS_1252.encode(text);
    assert_eq!(
        run(connector(""), PASS_THROUGH, "d.csv", &cp1252).await.output("rows"),
        expected
    );
    // Latin-1 declared.
    let o = run(
        connector("[input]\nencoding = \"latin-1\"\n"),
        PASS_THROUGH,
        "e.csv",
        &cp1252,
    )
    .await;
    assert_eq!(o.output("rows"), expected);
}

#[tokio::test]
async fn json_lines_with_nested_values_and_bad_lines() {
    let jsonl = "{\"id\": 1, \"name\": \"a\", \"tags\": [\"x\"], \"zip\": \"01234\"}\n\
                 \n\
                 {\"id\": 2, \"name\": null, \"extra\": {\"k\": 1}}\n\
                 not json\n\
                 [1,2]\n\
                 {\"id\": 3, \"name\": \"c\"}\n";
    let o = run(
        connector(""),
        "CREATE VIEW output.rows AS SELECT id, name, tags, zip, extra FROM input.data ORDER BY id",
        "events.jsonl",
        jsonl.as_bytes(),
    )
    .await;
    assert_eq!(o.status(), "partial_success", "{:?}", o.doc.error);
    assert_eq!(
        o.output("rows"),
        "id,name,tags,zip,extra\n1,a,\"[\"\"x\"\"]\",01234,\n2,,,,\"{\"\"k\"\":1}\"\n3,c,,,\n"
    );
    let rejected = o.rejected();
    assert_eq!(rejected.len(), 2);
    assert_eq!(&rejected[0][3], "4");
    assert!(
        rejected[0][4].starts_with("invalid JSON: expected ident at column 2"),
        "{:?}",
        &rejected[0][4]
    );
    assert_eq!(&rejected[1][3], "5");
    assert!(rejected[1][4].starts_with("expected a JSON object, found an array"));
}

#[tokio::test]
async fn json_array_and_single_object() {
    let json = "[{\"a\": 1, \"b\": true}, {\"a\": 2, \"b\": false}, 7]";
    let o = run(connector(""), PASS_THROUGH, "x.json", json.as_bytes()).await;
    assert_eq!(o.output("rows"), "a,b\n1,true\n2,false\n");
    assert_eq!(o.rejected().len(), 1);
    let o = run(connector(""), PASS_THROUGH, "y.json", b"{\n  \"a\": 1\n}\n").await;
    assert_eq!(o.output("rows"), "a\n1\n");
}

fn parquet_bytes() -> Vec<u8> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("Order ID", DataType::Int64, false),
        Field::new("amount", DataType::Float64, true),
        Field::new("sku", DataType::Utf8, true),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(vec![1, 2, 3])),
        Arc::new(Float64Array::from(vec![Some(9.5), None, Some(1.25)])),
        Arc::new(StringArray::from(vec!["007", "a,b", "c"])),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns).unwrap_or_else(|e| panic!("{e}"));
    let mut out = Vec::new();
    let mut w =
        datafusion::parquet::arrow::ArrowWriter::try_new(&mut out, schema, None).unwrap_or_else(|e| panic!("{e}"));
    w.write(&batch).unwrap_or_else(|e| panic!("{e}"));
    w.close().unwrap_or_else(|e| panic!("{e}"));
    out
}

#[tokio::test]
async fn parquet_columns_are_normalised() {
    let o = run(
        connector(""),
        "CREATE VIEW output.rows AS SELECT * FROM input.orders ORDER BY order_id",
        "orders.parquet",
        &parquet_bytes(),
    )
    .await;
    assert_eq!(o.status(), "success", "{:?}", o.doc.error);
    assert_eq!(
        o.output("rows"),
        "order_id,amount,sku\n1,9.5,007\n2,,\"a,b\"\n3,1.25,c\n"
    );
    assert_eq!(o.json()["step_progress"][0]["tables"][0]["rows"], 3);
}

fn xlsx_bytes() -> Vec<u8> {
    use rust_xlsxwriter::{ExcelDateTime, Format, Workbook};
    let mut wb = Workbook::new();
    let date = Format::new().set_num_format("yyyy-mm-dd");
    let s = wb.add_worksheet();
    s.set_name("Q1 Sales").unwrap_or_else(|e| panic!("{e}"));
    for (c, h) in ["Region", "Units", "Day", "Zip"].iter().enumerate() {
        s.write_string(0, c as u16, *h).unwrap_or_else(|e| panic!("{e}"));
    }
    let rows = [
        ("North", 3.0, (2024, 1, 15), "01234"),
        ("South", 4.5, (2024, 2, 29), "99999"),
    ];
    for (r, (region, units, (y, m, d), zip)) in rows.iter().enumerate() {
        let r = r as u32 + 1;
        s.write_string(r, 0, *region).unwrap_or_else(|e| panic!("{e}"));
        s.write_number(r, 1, *units).unwrap_or_else(|e| panic!("{e}"));
        let dt = ExcelDateTime::from_ymd(*y, *m, *d).unwrap_or_else(|e| panic!("{e}"));
        s.write_datetime_with_format(r, 2, &dt, &date)
            .unwrap_or_else(|e| panic!("{e}"));
        s.write_string(r, 3, *zip).unwrap_or_else(|e| panic!("{e}"));
    }
    let s2 = wb.add_worksheet();
    s2.set_name("Notes").unwrap_or_else(|e| panic!("{e}"));
    s2.write_string(0, 0, "text").unwrap_or_else(|e| panic!("{e}"));
    s2.write_string(1, 0, "hello").unwrap_or_else(|e| panic!("{e}"));
    wb.save_to_buffer().unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn every_xlsx_sheet_is_a_table() {
    let script = "CREATE VIEW output.sales AS SELECT *, arrow_typeof(day) AS day_type FROM input.q1_sales;\n\
                  CREATE VIEW output.notes AS SELECT * FROM input.notes";
    let o = run(connector(""), script, "book.xlsx", &xlsx_bytes()).await;
    assert_eq!(o.status(), "success", "{:?}", o.doc.error);
    assert_eq!(
        o.output("sales"),
        "region,units,day,zip,day_type\nNorth,3,2024-01-15,01234,Date32\nSouth,4.5,2024-02-29,99999,Date32\n"
    );
    assert_eq!(o.output("notes"), "text\nhello\n");
}

#[tokio::test]
async fn every_zip_member_is_a_table() {
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default();
        z.start_file("exports/Customers.csv", opts)
            .unwrap_or_else(|e| panic!("{e}"));
        z.write_all(b"id,name\n1,Ada\n2,Grace\n")
            .unwrap_or_else(|e| panic!("{e}"));
        z.start_file("orders.jsonl", opts).unwrap_or_else(|e| panic!("{e}"));
        z.write_all(b"{\"customer\":1,\"total\":10}\n{\"customer\":1,\"total\":5}\n")
            .unwrap_or_else(|e| panic!("{e}"));
        z.start_file("__MACOSX/._orders.jsonl", opts)
            .unwrap_or_else(|e| panic!("{e}"));
        z.write_all(b"junk").unwrap_or_else(|e| panic!("{e}"));
        z.finish().unwrap_or_else(|e| panic!("{e}"));
    }
    let script = "CREATE VIEW output.totals AS SELECT c.name, sum(o.total) AS total FROM input.customers c JOIN input.orders o ON o.customer = c.id GROUP BY c.name";
    let o = run(connector(""), script, "export.zip", buf.get_ref()).await;
    assert_eq!(o.status(), "success", "{:?}", o.doc.error);
    assert_eq!(o.output("totals"), "name,total\nAda,15\n");
}

#[tokio::test]
async fn empty_and_binary_files_are_unreadable() {
    for (name, bytes) in [
        ("empty.csv", &b""[..]),
        ("blank.csv", b"\n\n  \n"),
        ("a.out", b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x02\x00\x3e\x00"),
        ("garbage.csv", &[0u8, 159, 146, 150, 0, 1, 2, 3, 4, 5][..]),
        ("old.xls", &[0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1][..]),
        ("broken.parquet", b"PAR1 this is not really parquet"),
        ("broken.zip", b"PK\x03\x04 truncated"),
    ] {
        let o = run(connector(""), PASS_THROUGH, name, bytes).await;
        assert_eq!(o.status(), "failed", "{name}");
        let e = o.doc.error.clone().unwrap_or_else(|| panic!("{name}: no error"));
        assert_eq!(e.code.as_str(), "unreadable_input", "{name}: {}", e.message);
        assert_eq!(e.stage.as_str(), "intake", "{name}");
        assert!(
            e.message.contains(name),
            "{name}: the message names the file: {}",
            e.message
        );
    }
}

#[tokio::test]
async fn a_text_format_forced_on_a_file_that_is_not_text_says_what_the_file_is() {
    let workbook =
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/hostile/dense.xlsx")).unwrap_or_else(|e| panic!("{e}"));
    let elf = b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x02\x00\x3e\x00";
    for (format, name, bytes, is) in [
        ("csv", "export.xlsx", &workbook[..], "an XLSX workbook"),
        ("jsonl", "export.csv", &workbook[..], "an XLSX workbook"),
        ("csv", "a.csv", &elf[..], "binary data"),
    ] {
        let o = run(
            connector(&format!("[input]\nformat = \"{format}\"\n")),
            PASS_THROUGH,
            name,
            bytes,
        )
        .await;
        let e = o.doc.error.clone().unwrap_or_else(|| panic!("{name}: no error"));
        assert_eq!(
            (e.code.as_str(), e.stage.as_str()),
            ("unreadable_input", "intake"),
            "{}",
            e.message
        );
        assert!(
            e.message.contains(name) && e.message.contains(is) && e.message.contains(&format!("as {format}")),
            "{}",
            e.message
        );
    }
}

/// Found by fuzzing intake: a Parquet file declaring a decimal stored in
/// more bytes than its type takes made the Parquet reader panic mid-scan.
#[tokio::test]
async fn a_parquet_decimal_wider_than_its_type_is_unreadable_not_a_panic() {
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/fuzz/decimal-too-wide.parquet"
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_unreadable_at_intake("wide.parquet", &bytes, &["wide.parquet", "decimal"]).await;
}

/// Runs `bytes` as the file `name`, which the intake must refuse as
/// unreadable with a message holding each of `says`.
async fn assert_unreadable_at_intake(name: &str, bytes: &[u8], says: &[&str]) {
    let o = run(connector(""), PASS_THROUGH, name, bytes).await;
    assert_eq!(o.status(), "failed");
    let e = o.doc.error.clone().unwrap_or_else(|| panic!("no error"));
    assert_eq!(
        (e.code.as_str(), e.stage.as_str()),
        ("unreadable_input", "intake"),
        "{}",
        e.message
    );
    assert!(says.iter().all(|s| e.message.contains(s)), "{}", e.message);
}

/// A decimal stored as variable-length bytes, longer than its type takes,
/// is refused at intake too, with the file and the column named.
#[tokio::test]
async fn a_parquet_byte_array_decimal_wider_than_its_type_is_unreadable() {
    use datafusion::parquet::data_type::{ByteArray, ByteArrayType};
    use datafusion::parquet::file::writer::SerializedFileWriter;
    use datafusion::parquet::schema::parser::parse_message_type;

    let schema =
        parse_message_type("message m { required binary amount (DECIMAL(10,2)); }").unwrap_or_else(|e| panic!("{e}"));
    let mut bytes = Vec::new();
    let mut writer =
        SerializedFileWriter::new(&mut bytes, Arc::new(schema), Arc::default()).unwrap_or_else(|e| panic!("{e}"));
    let mut group = writer.next_row_group().unwrap_or_else(|e| panic!("{e}"));
    let mut column = group
        .next_column()
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("no column"));
    let values = [ByteArray::from(vec![1u8; 20]), ByteArray::from(vec![0u8, 7])];
    column
        .typed::<ByteArrayType>()
        .write_batch(&values, None, None)
        .unwrap_or_else(|e| panic!("{e}"));
    column.close().unwrap_or_else(|e| panic!("{e}"));
    group.close().unwrap_or_else(|e| panic!("{e}"));
    writer.close().unwrap_or_else(|e| panic!("{e}"));

    assert_unreadable_at_intake("amounts.parquet", &bytes, &["amounts.parquet", "`amount`"]).await;
}

/// Reads `bytes` (named `name`) with the intake twice: whole, then with a
/// cancel after 1/20 of that time, which must stop the read in under half of
/// it (a ratio measured in the same run).
async fn assert_a_cancel_stops_reading(bytes: &[u8], name: &str) {
    use std::time::{Duration, Instant};
    use tokio_util::sync::CancellationToken;
    use weir_engine::connector::{InputOptions, LimitsDef};
    use weir_engine::intake::{self, IntakeOptions, RejectSink};
    use weir_engine::report::RejectedRow;
    use weir_engine::sql::{self, SessionSettings};

    struct Ignore;
    impl RejectSink for Ignore {
        fn reject(&self, _row: RejectedRow) {}
    }

    let (_dir, path) = weir_tests::input(name, bytes);
    let limits = LimitsDef::default().parse().unwrap_or_else(|e| panic!("{e:?}"));
    let options = IntakeOptions::new(&InputOptions::default(), &limits).unwrap_or_else(|e| panic!("{e}"));
    let read = |cancel: CancellationToken| {
        let (path, options) = (path.clone(), options.clone());
        async move {
            let ctx = sql::session(&SessionSettings {
                threads: 1,
                max_memory: 1 << 30,
                batch_size: 8192,
                spill_dir: None,
            })?;
            intake::open(&ctx, &path, name, &options, Arc::new(Ignore), cancel)
                .await
                .map(|i| i.tables.len())
        }
    };

    let started = Instant::now();
    assert_eq!(read(CancellationToken::new()).await.ok(), Some(1));
    let whole = started.elapsed();

    // The fastest of up to three canceled reads: a busy machine may slow
    // one, but a cancel that does not work leaves every one near `whole`.
    let after = (whole / 20).max(Duration::from_millis(1));
    let mut fastest = Duration::MAX;
    for _ in 0..3 {
        let cancel = CancellationToken::new();
        let trigger = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            trigger.cancel();
        });
        let started = Instant::now();
        let outcome = read(cancel).await;
        fastest = fastest.min(started.elapsed());
        assert!(
            matches!(outcome, Err(weir_engine::Error::Canceled)),
            "{name}: {:?}",
            outcome.map(|_| ())
        );
        if fastest < whole / 2 {
            break;
        }
    }
    assert!(
        fastest < whole / 2,
        "{name}: the cancel came after {after:?} but the read went on for {fastest:?} of {whole:?}"
    );
}

/// A cancel stops a large workbook while it is being parsed, not after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_stops_reading_a_large_workbook() {
    let mut wb = rust_xlsxwriter::Workbook::new();
    let s = wb.add_worksheet();
    for r in 0..150_000u32 {
        for c in 0..3u16 {
            s.write_string(r, c, format!("r{r}c{c}"))
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }
    let bytes = wb.save_to_buffer().unwrap_or_else(|e| panic!("{e}"));
    assert_a_cancel_stops_reading(&bytes, "big.xlsx").await;
}

/// A cancel stops unpacking a large ZIP member, not after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_stops_unpacking_a_large_archive() {
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        z.start_file("big.csv", zip::write::SimpleFileOptions::default())
            .unwrap_or_else(|e| panic!("{e}"));
        z.write_all(b"a,b\n").unwrap_or_else(|e| panic!("{e}"));
        let block = b"1,2\n".repeat(1 << 18);
        for _ in 0..96 {
            z.write_all(&block).unwrap_or_else(|e| panic!("{e}"));
        }
        z.finish().unwrap_or_else(|e| panic!("{e}"));
    }
    assert_a_cancel_stops_reading(&buf.into_inner(), "big.zip").await;
}

/// The hostile workbooks of `tests/hostile/`: one whose two cells span the
/// whole sheet (a dense reader allocates 17 billion cells) reads as the two
/// rows it has; one whose single shared string unpacks to 200 MB is refused
/// for the run's memory before it is unpacked.
#[tokio::test]
async fn hostile_workbooks_end_their_run_with_a_clear_code() {
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("hostile");
    let read = |name: &str| std::fs::read(corpus.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let script = "CREATE VIEW output.o AS SELECT count(*) AS n FROM input.data";
    let o = run(connector(""), script, "dense.xlsx", &read("dense.xlsx")).await;
    assert_eq!(o.status(), "success", "{:?}", o.doc.error);
    assert_eq!(o.output("o"), "n\n1\n");
    let limits = "[limits]\nmax_memory = \"256MiB\"\n";
    let o = run(connector(limits), script, "huge-string.xlsx", &read("huge-string.xlsx")).await;
    let e = o.doc.error.clone().unwrap_or_else(|| panic!("no error"));
    assert_eq!(e.code.as_str(), "limit_exceeded", "{}", e.message);
    assert!(e.message.contains("sharedStrings.xml"), "{}", e.message);
}

/// A ZIP's members are unpacked into the directory the run names (the
/// run's own), in a directory removed with the intake, and an archive of
/// more entries than are read is refused before any is unpacked.
#[tokio::test]
async fn a_zip_unpacks_into_its_run_and_holds_a_bounded_number_of_entries() {
    use tokio_util::sync::CancellationToken;
    use weir_engine::connector::{InputOptions, LimitsDef};
    use weir_engine::intake::{self, IntakeOptions, MAX_MEMBERS, RejectSink};
    use weir_engine::report::RejectedRow;
    use weir_engine::sql::{self, SessionSettings};

    struct Ignore;
    impl RejectSink for Ignore {
        fn reject(&self, _row: RejectedRow) {}
    }
    fn archive(members: usize) -> Vec<u8> {
        let mut buf = std::io::Cursor::new(Vec::new());
        let mut z = zip::ZipWriter::new(&mut buf);
        for i in 0..members {
            z.start_file(format!("part-{i}.csv"), zip::write::SimpleFileOptions::default())
                .unwrap_or_else(|e| panic!("{e}"));
            z.write_all(b"a\n1\n").unwrap_or_else(|e| panic!("{e}"));
        }
        z.finish().unwrap_or_else(|e| panic!("{e}"));
        buf.into_inner()
    }

    let run_dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let limits = LimitsDef::default().parse().unwrap_or_else(|e| panic!("{e:?}"));
    let mut options = IntakeOptions::new(&InputOptions::default(), &limits).unwrap_or_else(|e| panic!("{e}"));
    options.unpack_dir = Some(run_dir.path().to_path_buf());
    let ctx = sql::session(&SessionSettings {
        threads: 1,
        max_memory: 1 << 30,
        batch_size: 8192,
        spill_dir: None,
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let entries = |dir: &std::path::Path| std::fs::read_dir(dir).map_or(0, Iterator::count);

    let (_input, path) = weir_tests::input("two.zip", &archive(2));
    let intake = intake::open(
        &ctx,
        &path,
        "two.zip",
        &options,
        Arc::new(Ignore),
        CancellationToken::new(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(intake.tables.len(), 2);
    let unpacked: Vec<_> = std::fs::read_dir(run_dir.path())
        .unwrap_or_else(|e| panic!("{e}"))
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(unpacked.len(), 1, "{unpacked:?}");
    assert_eq!(entries(&unpacked[0]), 2);
    drop(intake);
    assert_eq!(entries(run_dir.path()), 0, "the unpacked members go with the intake");

    let (_input, path) = weir_tests::input("many.zip", &archive(MAX_MEMBERS + 1));
    let refused = intake::open(
        &ctx,
        &path,
        "many.zip",
        &options,
        Arc::new(Ignore),
        CancellationToken::new(),
    )
    .await;
    let message = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains(&format!("at most {MAX_MEMBERS}")), "{message}");
    assert_eq!(entries(run_dir.path()), 0, "nothing was unpacked");
}

/// A JSON Lines file read on several threads gives what one thread gives:
/// the rows in file order with their lines, the rejected rows with their
/// numbers, lines, reasons and values, and the counts; also when
/// `max_rows` stops the read part way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_read_on_several_threads_gives_what_one_thread_gives() {
    // Clean lines first (the sample infers `id` as an integer), then every
    // kind of line a worker must report as one thread does.
    let mut text = String::new();
    for i in 0..6000u32 {
        let line = match i {
            _ if i < 1200 => format!(r#"{{"id":{i},"name":"n{i}","tags":["a","b"],"amount":{}.5}}"#, i % 50),
            _ if i % 97 == 0 => "not json at all".to_string(),
            _ if i % 131 == 0 => "   ".to_string(),
            _ if i % 157 == 0 => format!(r#"{{"id":"x{i}","name":"n{i}"}}"#),
            _ if i % 173 == 0 => "[1, 2]".to_string(),
            _ if i % 199 == 0 => format!(r#"{{"id":{i},"surprise":true}}"#),
            _ => format!(r#"{{"name":"m{i}","id":{i},"amount":{}}}"#, i % 7),
        };
        text.push_str(&line);
        text.push_str(if i % 7 == 0 { "\r\n" } else { "\n" });
    }
    assert_threads_read_alike("deliveries.jsonl", text.as_bytes(), "| 6000  |").await;
}

/// The same for a CSV file: quoted fields across lines, quotes inside
/// unquoted fields, doubled quotes, CRLF lines, ragged records, invalid
/// UTF-8 and values of the wrong type after the sample.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_read_on_several_threads_gives_what_one_thread_gives() {
    let mut text: Vec<u8> = b"id,name,note\r\n".to_vec();
    for i in 1..=6000u32 {
        let record: Vec<u8> = match i {
            _ if i < 1200 => format!("{i},n{i},plain\n").into_bytes(),
            _ if i % 97 == 0 => format!("{i},\"two\nlines, \"\"quoted\"\"\",x\n").into_bytes(),
            _ if i % 101 == 0 => format!("{i},12\" screen,inch\n").into_bytes(),
            _ if i % 131 == 0 => format!("{i},short\n").into_bytes(),
            _ if i % 157 == 0 => format!("x{i},n{i},wrong type\n").into_bytes(),
            _ if i % 173 == 0 => [format!("{i},").into_bytes(), vec![0xff, 0xfe], b",bad utf8\n".to_vec()].concat(),
            _ if i % 7 == 0 => format!("{i},\"n,{i}\",crlf\r\n").into_bytes(),
            // Often enough that runs are cut next to (never inside) them.
            _ if i % 5 == 0 => format!("{i},\"three\nphysical\r\nlines\",\"a \"\"b\"\"\"\n").into_bytes(),
            _ => format!("{i},m{i},\"\"\n").into_bytes(),
        };
        text.extend_from_slice(&record);
    }
    assert_threads_read_alike("people.csv", &text, "plain").await;
}

/// Reads `bytes` as file `name` on 1, 2 and 4 threads in small batches
/// (many runs), whole and stopped by `max_rows` at 3000, and asserts every
/// read gives the same rows, rejected rows and counts; `shows` is a text
/// the rows hold.
async fn assert_threads_read_alike(name: &str, bytes: &[u8], shows: &str) {
    use std::sync::Mutex;
    use tokio_util::sync::CancellationToken;
    use weir_engine::connector::{InputOptions, LimitsDef};
    use weir_engine::intake::{self, IntakeOptions, RejectSink};
    use weir_engine::report::RejectedRow;
    use weir_engine::sql::{self, SessionSettings};

    #[derive(Default)]
    struct Keep(Mutex<Vec<RejectedRow>>);
    impl RejectSink for Keep {
        fn reject(&self, row: RejectedRow) {
            self.0.lock().unwrap_or_else(|e| panic!("{e}")).push(row);
        }
    }

    let (_dir, path) = weir_tests::input(name, bytes);
    let limits = LimitsDef::default().parse().unwrap_or_else(|e| panic!("{e:?}"));
    let read = |threads: usize, max_rows: u64, canceled: bool| {
        let path = path.clone();
        let mut options = IntakeOptions::new(&InputOptions::default(), &limits).unwrap_or_else(|e| panic!("{e}"));
        options.batch_size = 64;
        options.threads = threads;
        options.max_rows = max_rows;
        async move {
            let ctx = sql::session(&SessionSettings {
                threads,
                max_memory: 1 << 30,
                batch_size: 64,
                spill_dir: None,
            })
            .unwrap_or_else(|e| panic!("{e}"));
            let keep = Arc::new(Keep::default());
            let cancel = CancellationToken::new();
            let intake = intake::open(&ctx, &path, name, &options, keep.clone(), cancel.clone())
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            if canceled {
                cancel.cancel();
            }
            let table = &intake.tables[0];
            let rows = match ctx.read_table(table.provider.clone()) {
                Ok(df) => df.collect().await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            let shown = rows.map(|batches| {
                datafusion::arrow::util::pretty::pretty_format_batches(&batches)
                    .unwrap_or_else(|e| panic!("{e}"))
                    .to_string()
            });
            let rejected = keep.0.lock().unwrap_or_else(|e| panic!("{e}")).clone();
            (shown, rejected, table.stats.rows(), table.stats.invalid())
        }
    };

    let one = read(1, u64::MAX, false).await;
    let (shown, rejected, rows, invalid) = &one;
    let shown = shown.as_ref().unwrap_or_else(|e| panic!("{e}"));
    assert!(*rows > 5000 && *invalid > 50, "{rows} rows, {invalid} invalid");
    assert_eq!(rejected.len() as u64, *invalid);
    assert!(shown.contains(shows), "{}", &shown[..400]);
    for threads in [2, 4] {
        let many = read(threads, u64::MAX, false).await;
        if many != one {
            let show = |r: &(Result<String, String>, Vec<RejectedRow>, u64, u64)| {
                format!("{} rows, {} invalid, {} rejected", r.2, r.3, r.1.len())
            };
            let first_difference = many.1.iter().zip(&one.1).find(|(a, b)| a != b);
            panic!(
                "{threads} threads read otherwise than one: {} against {}; first differing rejected row: {first_difference:?}",
                show(&many),
                show(&one)
            );
        }
    }

    // Stopped by `max_rows` in the middle of the file: the same error, the
    // same rows counted and the same rejected rows before the limit.
    let one = read(1, 3000, false).await;
    assert!(
        one.0.as_ref().is_err_and(|e| e.contains("more than 3000 rows")),
        "{:?}",
        one.0
    );
    assert_eq!(one.2, 3000);
    for threads in [2, 4] {
        let many = read(threads, 3000, false).await;
        assert_eq!(many.0.as_ref().err(), one.0.as_ref().err());
        assert_eq!((many.2, many.3), (one.2, one.3), "{threads} threads");
        assert!(many.1 == one.1, "{threads} threads rejected otherwise");
    }

    // A cancel stops a read on several threads.
    let canceled = read(2, u64::MAX, true).await;
    assert!(
        canceled.0.as_ref().is_err_and(|e| e.contains("cancel")),
        "{:?}",
        canceled.0
    );
}
