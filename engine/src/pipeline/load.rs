//! The load stage: a scope's converted batches loaded in chunks on a thread of
//! their own, each chunk decided while the one before it commits, its outcomes
//! reported and counted once it has landed.

use super::*;

/// One batch of a scope's final rows, converted, on its way to the loader.
pub(super) struct Prepared {
    pub(super) batch: RecordBatch,
    pub(super) converted: Converted,
    /// How many rows of the scope came before the batch.
    pub(super) first_row: u64,
    /// The valid rows' indexes in the batch (only when the scope has load
    /// steps).
    pub(super) valid: Vec<usize>,
    /// The valid rows' values for the load steps, in the order of `valid`.
    pub(super) rows: Vec<Row>,
}

/// The names of a scope's load rows: its variables, then a slot for each
/// record id variable its steps fill in.
pub(super) fn load_names(schema: &SchemaRef, steps: &[Arc<LoadStep>]) -> Arc<Vec<String>> {
    let mut names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    for step in steps {
        if let Some(var) = &step.def().record_id_variable
            && !names.contains(var)
        {
            names.push(var.clone());
        }
    }
    Arc::new(names)
}

/// The valid rows of a converted batch: their indexes, and their values
/// as load rows.
pub(super) fn load_rows(converted: &Converted, names: &Arc<Vec<String>>) -> Result<(Vec<usize>, Vec<Row>)> {
    if converted.values.num_rows() != converted.valid.len() {
        return Err(Error::Internal(
            "variable values do not line up with the scope rows".into(),
        ));
    }
    let valid: Vec<usize> = converted
        .valid
        .iter()
        .enumerate()
        .filter(|(_, v)| **v)
        .map(|(i, _)| i)
        .collect();
    let columns = converted.values.columns();
    let rows = valid
        .iter()
        .map(|&r| {
            let mut values: Vec<Value> = columns.iter().map(|c| value_at(c, r)).collect();
            values.resize(names.len(), Value::Null);
            Row::new(names.clone(), values)
        })
        .collect();
    Ok((valid, rows))
}

/// Reports the invalid rows of a scope and loads its valid ones, batch by
/// batch in order, on a thread of its own.
///
/// Rows are loaded in chunks, one transaction each. A chunk is decided
/// while the chunk before it commits (on a second thread, the decisions
/// seeing the committing chunk's records), and its outcomes are reported
/// and counted only once its commit has landed: the counts say exactly
/// what was written. A cancel is honoured between chunks: it waits for the
/// commit in flight, and the chunk decided beside it is dropped unwritten.
pub(super) struct Loader {
    pub(super) scope: String,
    /// The scope's load steps, in order.
    pub(super) steps: Vec<Arc<LoadStep>>,
    pub(super) shared: Shared,
    /// Rows per commit.
    pub(super) chunk: usize,
}

/// A chunk decided by every load step of its scope, not yet reported.
pub(super) struct Pending {
    /// Each step's decisions, in step order.
    pub(super) decided: Vec<Decided>,
    /// The batch the chunk's rows come from, for the values of rejected rows.
    pub(super) batch: RecordBatch,
    /// How many rows of the scope came before that batch.
    pub(super) first_row: u64,
    /// The chunk's rows' indexes in the batch.
    pub(super) rows: Vec<usize>,
    /// Invalid rows of the batch, reported just before the chunk's outcomes
    /// to keep the rejected rows in order.
    pub(super) invalid: Vec<RejectedRow>,
}

impl Loader {
    pub(super) fn run(self, mut rx: mpsc::Receiver<Prepared>) -> Result<()> {
        let mut pending = None;
        while let Some(prepared) = rx.blocking_recv() {
            if self.shared.halt.is_cancelled() {
                return Err(Error::Canceled);
            }
            self.accept(prepared, &mut pending)?;
        }
        self.flush(&mut pending)
    }

    /// Reports and loads one batch; its last chunk may be left pending.
    fn accept(&self, prepared: Prepared, pending: &mut Option<Pending>) -> Result<()> {
        let Prepared {
            batch,
            converted,
            first_row,
            valid,
            mut rows,
        } = prepared;
        let mut invalid = self.invalid(&batch, &converted, first_row)?;
        let (valid_count, invalid_count) = (converted.valid.len() - invalid.len(), invalid.len());
        if self.steps.is_empty() || rows.is_empty() {
            self.flush(pending)?;
            invalid.drain(..).for_each(|row| self.shared.rejects.reject(row));
        }
        for start in (0..rows.len()).step_by(self.chunk) {
            if self.shared.halt.is_cancelled() {
                return Err(Error::Canceled);
            }
            let end = (start + self.chunk).min(rows.len());
            let decided = self.advance(pending, &mut rows[start..end])?;
            *pending = Some(Pending {
                decided,
                batch: batch.clone(),
                first_row,
                rows: valid[start..end].to_vec(),
                invalid: std::mem::take(&mut invalid),
            });
        }
        self.shared.progress.update(|d| {
            if let Some(StepProgress::Variables { scopes: s, .. }) = d.stage_mut(Stage::Variables)
                && let Some(c) = s.iter_mut().find(|c| c.scope == self.scope)
            {
                c.total += (valid_count + invalid_count) as u64;
                c.valid += valid_count as u64;
                c.invalid += invalid_count as u64;
            }
        });
        Ok(())
    }

    /// The invalid rows of a converted batch, as rejected rows.
    pub(super) fn invalid(
        &self,
        batch: &RecordBatch,
        converted: &Converted,
        first_row: u64,
    ) -> Result<Vec<RejectedRow>> {
        if converted.valid.iter().all(|v| *v) {
            return Ok(Vec::new());
        }
        let values = RowValues::new(batch)?;
        let mut issues = converted.issues.iter().peekable();
        let mut out = Vec::new();
        for (row, ok) in converted.valid.iter().enumerate() {
            let mut reasons = Vec::new();
            while let Some((r, issue)) = issues.peek() {
                if *r != row {
                    break;
                }
                reasons.push(issue.to_string());
                issues.next();
            }
            if !*ok {
                out.push(self.rejected(Stage::Variables, first_row + row as u64 + 1, reasons, values.row(row)));
            }
        }
        Ok(out)
    }

    pub(super) fn rejected(
        &self,
        stage: Stage,
        row: u64,
        reasons: Vec<String>,
        values: Vec<(String, Option<String>)>,
    ) -> RejectedRow {
        RejectedRow {
            stage,
            source: self.scope.clone(),
            row,
            line: None,
            reasons,
            values,
            failed: false,
        }
    }

    /// Decides a chunk with every step while the pending chunk commits,
    /// then reports the pending one. A step's `record_id_variable` is
    /// visible to the later steps.
    pub(super) fn advance(&self, pending: &mut Option<Pending>, rows: &mut [Row]) -> Result<Vec<Decided>> {
        let previous = pending.take();
        let (committed, decided) = std::thread::scope(|s| {
            let commit = previous.as_ref().map(|p| s.spawn(|| self.commit(p)));
            let decided = self.decide(rows, previous.as_ref());
            let committed = commit.map_or(Ok(()), |c| {
                c.join()
                    .unwrap_or_else(|_| Err(Error::Internal("the commit thread panicked".into())))
            });
            (committed, decided)
        });
        committed?;
        if let Some(p) = previous {
            self.report(p)?;
        }
        decided
    }

    fn decide(&self, rows: &mut [Row], previous: Option<&Pending>) -> Result<Vec<Decided>> {
        let mut out = Vec::with_capacity(self.steps.len());
        for (i, step) in self.steps.iter().enumerate() {
            let decided = step.decide(rows, previous.map(|p| &p.decided[i]))?;
            if let Some(var) = &step.def().record_id_variable {
                for (row, o) in rows.iter_mut().zip(decided.outcomes()) {
                    row.set(var, o.record().map_or(Value::Null, |id| Value::Text(id.to_string())));
                }
            }
            out.push(decided);
        }
        Ok(out)
    }

    pub(super) fn commit(&self, pending: &Pending) -> Result<()> {
        for (step, decided) in self.steps.iter().zip(&pending.decided) {
            step.commit(decided)?;
        }
        Ok(())
    }

    /// Commits the pending chunk, if any, and reports it.
    fn flush(&self, pending: &mut Option<Pending>) -> Result<()> {
        if let Some(p) = pending.take() {
            self.commit(&p)?;
            self.report(p)?;
        }
        Ok(())
    }

    /// Reports a committed chunk: its rejected rows, then its counts.
    pub(super) fn report(&self, pending: Pending) -> Result<()> {
        let Pending {
            decided,
            batch,
            first_row,
            rows,
            invalid,
        } = pending;
        invalid.into_iter().for_each(|row| self.shared.rejects.reject(row));
        let mut values = None;
        for (step, decided) in self.steps.iter().zip(decided) {
            let def = step.def();
            let outcomes = decided.outcomes();
            for (k, o) in outcomes.iter().enumerate() {
                let reason = match o {
                    Outcome::Skipped(r) | Outcome::Failed(r) => r,
                    _ => continue,
                };
                let values = match &values {
                    Some(v) => v,
                    None => values.insert(RowValues::new(&batch)?),
                };
                let row = rows[k];
                let reasons = vec![format!("load {} into {}: {reason}", def.order, def.object)];
                let mut rejected = self.rejected(Stage::Load, first_row + row as u64 + 1, reasons, values.row(row));
                rejected.failed = matches!(o, Outcome::Failed(_));
                self.shared.rejects.reject(rejected);
            }
            let counts = loads::count(outcomes);
            self.shared.progress.update(|d| {
                if let Some(StepProgress::Load { steps: s, .. }) = d.stage_mut(Stage::Load)
                    && let Some(c) = s.iter_mut().find(|c| c.order == def.order)
                {
                    c.total += counts.total;
                    c.created += counts.created;
                    c.updated += counts.updated;
                    c.skipped += counts.skipped;
                    c.failed += counts.failed;
                }
            });
            step.recycle(decided);
        }
        Ok(())
    }
}

/// One variable value as the store takes it.
fn value_at(array: &datafusion::arrow::array::ArrayRef, row: usize) -> Value {
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::{DataType, Date32Type, Float64Type, TimeUnit, TimestampMicrosecondType};
    if array.is_null(row) {
        return Value::Null;
    }
    match array.data_type() {
        DataType::Utf8 => Value::Text(array.as_string::<i32>().value(row).to_string()),
        DataType::Float64 => Value::Number(array.as_primitive::<Float64Type>().value(row)),
        DataType::Boolean => Value::Bool(array.as_boolean().value(row)),
        DataType::Date32 => Value::Date(array.as_primitive::<Date32Type>().value(row)),
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            Value::Datetime(array.as_primitive::<TimestampMicrosecondType>().value(row))
        }
        DataType::List(_) => {
            let list = array.as_list::<i32>().value(row);
            let options = FormatOptions::default();
            let texts: Vec<String> = match ArrayFormatter::try_new(list.as_ref(), &options) {
                Ok(f) => (0..list.len())
                    .filter(|i| !list.is_null(*i))
                    .map(|i| f.value(i).to_string())
                    .collect(),
                Err(_) => Vec::new(),
            };
            if texts.is_empty() {
                Value::Null
            } else {
                Value::Text(texts.join(", "))
            }
        }
        _ => match ArrayFormatter::try_new(array.as_ref(), &FormatOptions::default()) {
            Ok(f) => Value::Text(f.value(row).to_string()),
            Err(_) => Value::Null,
        },
    }
}
