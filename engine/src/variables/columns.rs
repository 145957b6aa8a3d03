//! Column-wise conversion: a batch's source column read once, typed values
//! taken as they are, text parsed by the variable's element, scalars or lists.

use super::*;

/// A variable's source in one batch, downcast once.
pub(super) enum Cells<'a> {
    /// The literal `value`.
    Literal(&'a str),
    /// The column is not there or cannot be read: every row has this fault.
    Broken(Fault),
    Utf8(&'a StringArray),
    LargeUtf8(&'a LargeStringArray),
    Utf8View(&'a StringViewArray),
    /// Any other type, read through its text form.
    Formatted(&'a dyn Array, ArrayFormatter<'a>),
    Number(Float64Array),
    Boolean(&'a BooleanArray),
    Date(Date32Array),
    /// Microseconds; UTC for zoned sources, taken as UTC for naive ones.
    Datetime(TimestampMicrosecondArray),
}

/// One row of a source.
pub(super) enum Cell<'s> {
    Null,
    Text(&'s str),
    Typed(Typed),
    Unprintable,
}

impl<'a> Cells<'a> {
    pub(super) fn new(var: &'a Variable, batch: &'a RecordBatch) -> Self {
        if let Source::Literal(text) = &var.source {
            return Cells::Literal(text.as_str());
        }
        match var.column(batch) {
            Some(array) => Cells::of(&var.parser, array),
            None => {
                let name = match &var.source {
                    Source::Column { name, .. } => name.as_str(),
                    Source::Literal(_) => "",
                };
                Cells::Broken(Fault::Invalid {
                    value: None,
                    message: format!("the scope has no column `{name}`"),
                })
            }
        }
    }

    pub(super) fn of(parser: &Parser, array: &'a ArrayRef) -> Self {
        if let Some(typed) = Cells::typed(parser, array) {
            return typed;
        }
        if let Some(strings) = array.as_string_opt::<i32>() {
            return Cells::Utf8(strings);
        }
        if let Some(strings) = array.as_string_opt::<i64>() {
            return Cells::LargeUtf8(strings);
        }
        if let Some(strings) = array.as_string_view_opt() {
            return Cells::Utf8View(strings);
        }
        match ArrayFormatter::try_new(array.as_ref(), &FormatOptions::default()) {
            Ok(formatter) => Cells::Formatted(array.as_ref(), formatter),
            Err(_) => Cells::Broken(Fault::Invalid {
                value: None,
                message: format!("values of type {} cannot be read", array.data_type()),
            }),
        }
    }

    /// A typed source taken as it is, when the variable's type fits it; a
    /// failed cast falls back to the text form.
    pub(super) fn typed(parser: &Parser, array: &'a ArrayRef) -> Option<Self> {
        let data_type = array.data_type();
        match parser {
            Parser::Number(_) if data_type.is_numeric() => cast(array, &DataType::Float64)
                .ok()
                .and_then(|a| a.as_primitive_opt::<Float64Type>().cloned())
                .map(Cells::Number),
            Parser::Boolean(_) => array.as_boolean_opt().map(Cells::Boolean),
            Parser::Date(_) => match data_type {
                DataType::Date32 => array.as_primitive_opt::<Date32Type>().cloned().map(Cells::Date),
                DataType::Date64 | DataType::Timestamp(_, _) => cast(array, &DataType::Date32)
                    .ok()
                    .and_then(|a| a.as_primitive_opt::<Date32Type>().cloned())
                    .map(Cells::Date),
                _ => None,
            },
            // Casting to a naive timestamp keeps the stored values: UTC
            // instants for zoned sources, wall-clock (taken as UTC) for naive.
            Parser::Datetime(_) => match data_type {
                DataType::Timestamp(_, _) | DataType::Date32 | DataType::Date64 => {
                    cast(array, &DataType::Timestamp(TimeUnit::Microsecond, None))
                        .ok()
                        .and_then(|a| a.as_primitive_opt::<TimestampMicrosecondType>().cloned())
                        .map(Cells::Datetime)
                }
                _ => None,
            },
            _ => None,
        }
    }

    /// Row `row`; text of formatted sources is written into `buf`.
    pub(super) fn cell<'s>(&'s self, row: usize, buf: &'s mut String) -> Cell<'s> {
        match self {
            Cells::Literal(text) => Cell::Text(text),
            Cells::Broken(_) => Cell::Null,
            Cells::Utf8(a) => text_cell(a.is_null(row), || a.value(row)),
            Cells::LargeUtf8(a) => text_cell(a.is_null(row), || a.value(row)),
            Cells::Utf8View(a) => text_cell(a.is_null(row), || a.value(row)),
            Cells::Formatted(array, formatter) => {
                if array.is_null(row) {
                    return Cell::Null;
                }
                buf.clear();
                if write!(buf, "{}", formatter.value(row)).is_err() {
                    return Cell::Unprintable;
                }
                Cell::Text(buf.as_str())
            }
            Cells::Number(a) => typed_cell(a.is_null(row), || Typed::Number(a.value(row))),
            Cells::Boolean(a) => typed_cell(a.is_null(row), || Typed::Bool(a.value(row))),
            Cells::Date(a) => typed_cell(a.is_null(row), || Typed::Date(a.value(row))),
            Cells::Datetime(a) => typed_cell(a.is_null(row), || Typed::Datetime(a.value(row))),
        }
    }

    /// The one outcome of every row, for sources that do not vary by row.
    fn uniform(&self) -> Option<Result<&'a str, Fault>> {
        match self {
            Cells::Literal(text) => Some(Ok(*text)),
            Cells::Broken(fault) => Some(Err(fault.clone())),
            _ => None,
        }
    }
}

fn text_cell<'s>(null: bool, value: impl FnOnce() -> &'s str) -> Cell<'s> {
    if null { Cell::Null } else { Cell::Text(value()) }
}

fn typed_cell<'s>(null: bool, value: impl FnOnce() -> Typed) -> Cell<'s> {
    if null { Cell::Null } else { Cell::Typed(value()) }
}

/// Parses one cell's text as a single value.
pub(super) fn parse_scalar<'t, E: Element>(el: &E, text: &'t str) -> Result<E::Value<'t>, Fault> {
    let text = text.trim();
    if text.is_empty() {
        return Err(Fault::Missing);
    }
    el.parse(text).map_err(|message| Fault::Invalid {
        value: Some(text.to_owned()),
        message,
    })
}

/// Parses one cell's text as a list: split, trimmed, empty elements dropped;
/// one bad element makes the whole value invalid.
pub(super) fn parse_list<'t, E: Element>(el: &E, delimiter: &str, text: &'t str) -> Result<Vec<E::Value<'t>>, Fault> {
    let text = text.trim();
    let mut values = Vec::new();
    for part in text.split(delimiter) {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        match el.parse(part) {
            Ok(value) => values.push(value),
            Err(message) => {
                return Err(Fault::Invalid {
                    value: Some(text.to_owned()),
                    message,
                });
            }
        }
    }
    if values.is_empty() {
        Err(Fault::Missing)
    } else {
        Ok(values)
    }
}

fn parse_typed<'a, E: Element>(el: &E, value: Typed) -> Result<E::Value<'a>, Fault> {
    el.typed(value).map_err(|message| Fault::Invalid {
        value: Some(value.to_string()),
        message,
    })
}

fn unprintable() -> Fault {
    Fault::Invalid {
        value: None,
        message: "the value cannot be read as text".into(),
    }
}

/// Builds one variable's column for a batch of `rows` rows.
pub(super) fn convert_column<E: Element>(
    el: &E,
    var: &Variable,
    cells: &Cells<'_>,
    rows: usize,
    issues: &mut Vec<(usize, VariableIssue)>,
) -> ArrayRef {
    match &var.array_delimiter {
        None => convert_scalars(el, var, cells, rows, issues),
        Some(delimiter) => convert_lists(el, var, delimiter, cells, rows, issues),
    }
}

fn convert_scalars<E: Element>(
    el: &E,
    var: &Variable,
    cells: &Cells<'_>,
    rows: usize,
    issues: &mut Vec<(usize, VariableIssue)>,
) -> ArrayRef {
    let mut builder = el.builder(rows);
    if let Some(uniform) = cells.uniform() {
        // Parsed once, however many rows there are.
        let outcome = uniform.and_then(|text| parse_scalar(el, text));
        for row in 0..rows {
            push_scalar::<E>(&mut builder, var, row, &outcome, issues);
        }
        return builder.finish();
    }
    let mut buf = String::new();
    for row in 0..rows {
        let outcome = match cells.cell(row, &mut buf) {
            Cell::Null => Err(Fault::Missing),
            Cell::Text(text) => parse_scalar(el, text),
            Cell::Typed(value) => parse_typed(el, value),
            Cell::Unprintable => Err(unprintable()),
        };
        push_scalar::<E>(&mut builder, var, row, &outcome, issues);
    }
    builder.finish()
}

fn push_scalar<E: Element>(
    builder: &mut E::Builder,
    var: &Variable,
    row: usize,
    outcome: &Result<E::Value<'_>, Fault>,
    issues: &mut Vec<(usize, VariableIssue)>,
) {
    match outcome {
        Ok(value) => E::append(builder, value),
        Err(fault) => {
            E::append_null(builder);
            var.record(row, fault, issues);
        }
    }
}

fn convert_lists<E: Element>(
    el: &E,
    var: &Variable,
    delimiter: &str,
    cells: &Cells<'_>,
    rows: usize,
    issues: &mut Vec<(usize, VariableIssue)>,
) -> ArrayRef {
    let mut builder = ListBuilder::with_capacity(el.builder(rows), rows);
    if let Some(uniform) = cells.uniform() {
        let outcome = uniform.and_then(|text| parse_list(el, delimiter, text));
        for row in 0..rows {
            push_list::<E>(&mut builder, var, row, &outcome, issues);
        }
        return Arc::new(builder.finish());
    }
    let mut buf = String::new();
    for row in 0..rows {
        let outcome = match cells.cell(row, &mut buf) {
            Cell::Null => Err(Fault::Missing),
            Cell::Text(text) => parse_list(el, delimiter, text),
            Cell::Typed(value) => parse_typed(el, value).map(|v| vec![v]),
            Cell::Unprintable => Err(unprintable()),
        };
        push_list::<E>(&mut builder, var, row, &outcome, issues);
    }
    Arc::new(builder.finish())
}

fn push_list<E: Element>(
    builder: &mut ListBuilder<E::Builder>,
    var: &Variable,
    row: usize,
    outcome: &Result<Vec<E::Value<'_>>, Fault>,
    issues: &mut Vec<(usize, VariableIssue)>,
) {
    match outcome {
        Ok(values) => {
            for value in values {
                E::append(builder.values(), value);
            }
            builder.append(true);
        }
        Err(fault) => {
            builder.append_null();
            var.record(row, fault, issues);
        }
    }
}

/// A `string` variable read from a `Utf8` column whose values are all
/// trimmed and non-empty is that column: no copy.
pub(super) fn reuse_clean_strings(
    var: &Variable,
    cells: &Cells<'_>,
    rows: usize,
    issues: &mut Vec<(usize, VariableIssue)>,
) -> Option<ArrayRef> {
    let (Parser::Text(TextElement { kind: TextKind::Plain }), None, Cells::Utf8(strings)) =
        (&var.parser, &var.array_delimiter, cells)
    else {
        return None;
    };
    let clean = strings
        .iter()
        .all(|value| value.is_none_or(|s| !s.is_empty() && s.trim().len() == s.len()));
    if !clean {
        return None;
    }
    if var.required {
        for row in (0..rows).filter(|&row| strings.is_null(row)) {
            var.record(row, &Fault::Missing, issues);
        }
    }
    Some(Arc::new(StringArray::clone(strings)))
}
