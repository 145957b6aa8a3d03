//! The load stage (SPEC §3.6): for each valid row of a scope, the matching
//! rules of a load step decide create / update / skip, the field mappings
//! write values by their conflict rules, and each batch is committed to the
//! record store as one transaction.
//!
//! Rows that match the same key within one execution behave as if loaded
//! one after the other: a batch keeps the records it creates and changes in
//! memory, so a later row finds and updates them. This module decides and
//! counts; the store writes; the pipeline feeds batches and reports.

use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex};

use foldhash::{HashMap, HashSet};

use crate::connector::{ConflictRule, LoadDef, MultipleMatchAction, NoMatchAction, SingleMatchAction};
use crate::error::Result;
use crate::objects::{FieldType, ObjectDef};
use crate::store::{Found, MatchKey, RecordId, RecordStore, Tally, Value, Write, WriteBatch};

/// What happened to one row in one load step.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A record was created.
    Created(RecordId),
    /// A record was updated (possibly with no change).
    Updated(RecordId),
    /// The row was not uploaded, and why.
    Skipped(String),
    /// The row could not be written, and why.
    Failed(String),
}

impl Outcome {
    /// The record the row created or updated.
    pub fn record(&self) -> Option<RecordId> {
        match self {
            Outcome::Created(id) | Outcome::Updated(id) => Some(*id),
            _ => None,
        }
    }
}

/// Counts of one step, as the execution document shows them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Rows handled.
    pub total: u64,
    /// Records created.
    pub created: u64,
    /// Records updated.
    pub updated: u64,
    /// Rows skipped by a `do_not_upload` action (or no rule deciding).
    pub skipped: u64,
    /// Rows that failed.
    pub failed: u64,
}

impl Counts {
    fn add(&mut self, o: &Outcome) {
        self.total += 1;
        match o {
            Outcome::Created(_) => self.created += 1,
            Outcome::Updated(_) => self.updated += 1,
            Outcome::Skipped(_) => self.skipped += 1,
            Outcome::Failed(_) => self.failed += 1,
        }
    }
}

/// One row's variable values, by variable name. The names are shared by
/// every row of a batch; a row holds only its values.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Row {
    names: Arc<Vec<String>>,
    values: Vec<Value>,
}

impl Row {
    /// A row of `values`, one per name in `names`.
    pub fn new(names: Arc<Vec<String>>, values: Vec<Value>) -> Self {
        debug_assert_eq!(names.len(), values.len());
        Self { names, values }
    }

    /// The value of variable `name`. A row has a few variables: a scan
    /// of their names is cheaper than hashing.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.names.iter().position(|n| n == name).map(|i| &self.values[i])
    }

    /// Sets variable `name` (a record id variable, for the steps after).
    pub fn set(&mut self, name: &str, value: Value) {
        match self.names.iter().position(|n| n == name) {
            Some(i) => self.values[i] = value,
            None => {
                Arc::make_mut(&mut self.names).push(name.to_string());
                self.values.push(value);
            }
        }
    }
}

impl FromIterator<(String, Value)> for Row {
    fn from_iter<I: IntoIterator<Item = (String, Value)>>(pairs: I) -> Self {
        let (names, values): (Vec<String>, Vec<Value>) = pairs.into_iter().unzip();
        Self::new(Arc::new(names), values)
    }
}

/// A load step bound to its object and store. It owns what it needs, so a
/// run can load on a thread of its own.
pub struct LoadStep {
    step: LoadDef,
    object: ObjectDef,
    workspace: String,
    store: Arc<dyn RecordStore>,
    dry_run: bool,
    /// The last id created, so the next batch's ids sort after it.
    last_id: Mutex<Option<RecordId>>,
    /// A reported chunk's maps, emptied, for the next chunk to fill: a
    /// chunk's tables are large, and fresh ones cost the pages the
    /// system zeroes for them every time.
    spare: Mutex<Option<Batch>>,
    /// The fields the step writes: the mapped ones in mapping order, then
    /// the matched fields no mapping writes. A record's values are held by
    /// position in it.
    fields: Vec<String>,
    /// For each matched field no mapping writes (in their order in
    /// `fields`), the rules on it: a record a rule creates carries the
    /// value it was matched on, so the next run finds it.
    keys: Vec<Vec<usize>>,
    /// The execution whose counts each commit adds to the store's tally.
    tally: Option<String>,
    /// For each of `fields`, its definition when a value must be checked
    /// against it (a dropdown's options, a relation's id), found once.
    checked: Vec<Option<crate::objects::FieldDef>>,
}

impl LoadStep {
    /// Prepares a step: makes sure the object's table and the indexes of
    /// its matching fields exist (not in a dry run).
    pub fn new(
        step: LoadDef,
        object: ObjectDef,
        workspace: &str,
        store: Arc<dyn RecordStore>,
        dry_run: bool,
    ) -> Result<Self> {
        store.ensure_object(workspace, &object)?;
        if !dry_run {
            for rule in &step.matching {
                store.ensure_index(workspace, &object.name, &rule.field)?;
            }
        }
        let mapped = step.fields.len();
        let mut fields: Vec<String> = step.fields.iter().map(|m| m.field.clone()).collect();
        let mut keys: Vec<Vec<usize>> = Vec::new();
        for (r, rule) in step.matching.iter().enumerate() {
            match fields.iter().position(|f| *f == rule.field) {
                Some(i) if i < mapped => {}
                Some(i) => keys[i - mapped].push(r),
                None => {
                    fields.push(rule.field.clone());
                    keys.push(vec![r]);
                }
            }
        }
        let checked = fields
            .iter()
            .map(|name| {
                object
                    .fields
                    .iter()
                    .find(|f| f.name == *name && matches!(f.kind, FieldType::Dropdown | FieldType::Relation))
                    .cloned()
            })
            .collect();
        Ok(Self {
            step,
            object,
            workspace: workspace.to_string(),
            store,
            dry_run,
            last_id: Mutex::new(None),
            spare: Mutex::new(None),
            fields,
            keys,
            tally: None,
            checked,
        })
    }

    /// Keeps the step's counts with its commits, as execution
    /// `execution_id`'s (see [`RecordStore::tallies`]).
    pub fn with_tally(mut self, execution_id: &str) -> Self {
        self.tally = Some(execution_id.to_string());
        self
    }

    /// The step's definition.
    pub fn def(&self) -> &LoadDef {
        &self.step
    }

    /// Loads one batch of rows; returns each row's outcome and commits the
    /// batch (unless a dry run).
    pub fn load(&self, rows: &[Row]) -> Result<Vec<Outcome>> {
        let decided = self.decide(rows, None)?;
        self.commit(&decided)?;
        Ok(decided.outcomes)
    }

    /// Decides each row of a batch, and what the batch writes, without
    /// writing it. `previous` is the batch decided before this one, which
    /// may still be committing: this one sees its records as if committed.
    pub fn decide(&self, rows: &[Row], previous: Option<&Decided>) -> Result<Decided> {
        let previous = previous.map(|p| &p.batch);
        let spare = self.spare.lock().unwrap_or_else(|e| e.into_inner()).take();
        let mut batch = match spare {
            Some(batch) if batch.keys.len() == self.step.matching.len() => batch,
            _ => Batch::with_capacity(rows.len(), self.step.matching.len()),
        };
        // Every rule's keys are looked up at once, for the whole batch, with
        // the mapped fields of the records found, for the conflict rules of
        // the updates to come.
        let mut found: Vec<Vec<Vec<RecordId>>> = Vec::with_capacity(self.step.matching.len());
        for rule in &self.step.matching {
            let keys: Vec<Value> = rows
                .iter()
                .map(|r| r.get(&rule.variable).cloned().unwrap_or(Value::Null))
                .collect();
            let records = self
                .store
                .lookup(&self.workspace, &self.object, &rule.field, &keys, &self.fields)?;
            found.push(
                records
                    .into_iter()
                    .map(|records| {
                        records
                            .into_iter()
                            .map(|Found { id, values }| {
                                // The previous batch's values are newer than
                                // the store's, until it commits.
                                batch.current.entry(id).or_insert_with(|| {
                                    previous.and_then(|p| p.current.get(&id)).cloned().unwrap_or(values)
                                });
                                id
                            })
                            .collect()
                    })
                    .collect(),
            );
        }
        let mut last_id = self.last_id.lock().unwrap_or_else(|e| e.into_inner());
        let mut ids = Ids::after(*last_id);
        let mut outcomes = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            // Each rule's key of the row, made once: looked up in the
            // batches, then kept in this one's index.
            let keys: Keys = self
                .step
                .matching
                .iter()
                .map(|rule| row.get(&rule.variable).and_then(Value::match_key))
                .collect();
            let outcome = match self.decide_row(i, &keys, &found, &batch, previous) {
                Decision::Create(rule) => match self.values(row, rule) {
                    Ok(values) => {
                        let id = ids.next();
                        *last_id = Some(id);
                        batch.create(id, values, keys);
                        Outcome::Created(id)
                    }
                    Err(reason) => Outcome::Failed(reason),
                },
                Decision::Update(id) => match self.values(row, None) {
                    Ok(values) => {
                        self.update(&mut batch, id, values, previous)?;
                        batch.index(id, keys);
                        Outcome::Updated(id)
                    }
                    Err(reason) => Outcome::Failed(reason),
                },
                Decision::Skip(reason) => Outcome::Skipped(reason),
            };
            outcomes.push(outcome);
        }
        let write = if self.dry_run {
            WriteBatch::default()
        } else {
            let mut write = batch.write(&self.fields);
            write.tally = self.tally.as_ref().map(|execution_id| {
                let c = count(&outcomes);
                Tally {
                    execution_id: execution_id.clone(),
                    order: self.step.order,
                    total: c.total,
                    created: c.created,
                    updated: c.updated,
                    skipped: c.skipped,
                    failed: c.failed,
                }
            });
            write
        };
        Ok(Decided { outcomes, batch, write })
    }

    /// Takes back a chunk that has been committed and reported: its maps,
    /// emptied, serve the next chunk.
    pub fn recycle(&self, decided: Decided) {
        let mut batch = decided.batch;
        batch.clear();
        *self.spare.lock().unwrap_or_else(|e| e.into_inner()) = Some(batch);
    }

    /// Writes a decided batch as one transaction (nothing in a dry run).
    pub fn commit(&self, decided: &Decided) -> Result<()> {
        if self.dry_run {
            return Ok(());
        }
        self.store.commit(&self.workspace, &self.object.name, &decided.write)
    }

    fn decide_row(
        &self,
        row_index: usize,
        keys: &Keys,
        found: &[Vec<Vec<RecordId>>],
        batch: &Batch,
        previous: Option<&Batch>,
    ) -> Decision {
        if self.step.matching.is_empty() {
            return Decision::Create(None);
        }
        for (r, rule) in self.step.matching.iter().enumerate() {
            let mut matches: Matches = found[r][row_index].iter().copied().collect();
            let key = keys[r].as_ref();
            let earlier = previous.map_or(&[][..], |p| p.matching(r, key));
            for id in earlier.iter().chain(batch.matching(r, key)) {
                if !matches.contains(id) {
                    matches.push(*id);
                }
            }
            let describe = || format!("rule {} ({} = {})", r + 1, rule.field, rule.variable);
            match matches.len() {
                0 => match rule.no_match {
                    NoMatchAction::CreateNew => return Decision::Create(Some(r)),
                    NoMatchAction::NextRule => continue,
                    NoMatchAction::DoNotUpload => {
                        return Decision::Skip(format!("{}: no record matches; do_not_upload", describe()));
                    }
                },
                1 => match rule.single_match {
                    SingleMatchAction::UpdateCurrent => return Decision::Update(matches[0]),
                    SingleMatchAction::NextRule => continue,
                    SingleMatchAction::DoNotUpload => {
                        return Decision::Skip(format!("{}: one record matches; do_not_upload", describe()));
                    }
                },
                n => match rule.multiple_match {
                    MultipleMatchAction::NextRule => continue,
                    MultipleMatchAction::DoNotUpload => {
                        return Decision::Skip(format!("{}: {n} records match; do_not_upload", describe()));
                    }
                },
            }
        }
        Decision::Skip("no matching rule decided (every rule said next_rule)".into())
    }

    /// A row's values of the step's fields (mapped, then matched but not
    /// mapped), checked against the field types. An update writes only the
    /// mapped ones. A matched field takes the variable of `creating`, the
    /// rule that decided a create, when that rule is on it, else the first
    /// of its rules' variables that has a value.
    fn values(&self, row: &Row, creating: Option<usize>) -> std::result::Result<Vec<Value>, String> {
        let mut out = Vec::with_capacity(self.step.fields.len());
        for mapping in &self.step.fields {
            let value = match mapping.variables.as_slice() {
                [one] => row.get(one).cloned().unwrap_or(Value::Null),
                many => {
                    let texts: Vec<String> = many.iter().filter_map(|v| row.get(v).and_then(text_of)).collect();
                    if texts.is_empty() {
                        Value::Null
                    } else {
                        Value::Text(texts.join(" "))
                    }
                }
            };
            out.push(self.check(out.len(), value)?);
        }
        for rules in &self.keys {
            let value_of = |r: &usize| row.get(&self.step.matching[*r].variable).filter(|v| **v != Value::Null);
            let value = match creating.filter(|c| rules.contains(c)) {
                Some(rule) => value_of(&rule),
                None => rules.iter().find_map(value_of),
            };
            out.push(self.check(out.len(), value.cloned().unwrap_or(Value::Null))?);
        }
        Ok(out)
    }

    /// The value of the step's field `k` (its place in `fields`), checked:
    /// dropdown values are matched by label (stored as the option's
    /// label); relations must name a record id.
    fn check(&self, k: usize, value: Value) -> std::result::Result<Value, String> {
        let Some(def) = &self.checked[k] else {
            return Ok(value);
        };
        let field = &def.name;
        match (def.kind, &value) {
            (_, Value::Null) => Ok(value),
            (FieldType::Dropdown, v) => {
                let text = text_of(v).unwrap_or_default();
                def.options
                    .iter()
                    .find(|o| o.eq_ignore_ascii_case(text.trim()))
                    .map(|o| Value::Text(o.clone()))
                    .ok_or_else(|| format!("field {field}: `{text}` is not one of {}", def.options.join(", ")))
            }
            (FieldType::Relation, v) => {
                let text = text_of(v).unwrap_or_default();
                RecordId::parse_str(text.trim())
                    .map(|id| Value::Text(id.to_string()))
                    .map_err(|_| format!("field {field}: `{text}` is not a record id"))
            }
            _ => Ok(value),
        }
    }

    fn update(&self, batch: &mut Batch, id: RecordId, values: Vec<Value>, previous: Option<&Batch>) -> Result<()> {
        let current = match batch.current.entry(id) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                // The previous batch may have created or changed the record
                // and still be committing.
                let values = match previous.and_then(|p| p.current.get(&id)) {
                    Some(values) => values.clone(),
                    None => {
                        let mut record = self.store.get(&self.workspace, &self.object, &[id])?.pop().flatten();
                        self.fields
                            .iter()
                            .map(|f| record.as_mut().and_then(|r| r.fields.remove(f)).unwrap_or(Value::Null))
                            .collect()
                    }
                };
                e.insert(values)
            }
        };
        let changes = batch.changes.entry(id).or_insert_with(|| {
            batch.changed.push(id);
            vec![false; values.len()]
        });
        for (k, (value, mapping)) in values.into_iter().zip(&self.step.fields).enumerate() {
            let old = &current[k];
            let write = match mapping.conflict {
                ConflictRule::Overwrite => true,
                ConflictRule::OnlyUpdateBlank => old.is_blank(),
                ConflictRule::OverwriteExceptNull => value != Value::Null,
            };
            if write && *old != value {
                current[k] = value;
                changes[k] = true;
            }
        }
        Ok(())
    }
}

fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::Text(s) => Some(s.clone()),
        Value::Number(f) => Some(f.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Date(d) => Some(d.to_string()),
        Value::Datetime(m) => Some(m.to_string()),
    }
}

/// Ids of created records: UUIDv7, in creation order. One clock read and
/// random draw per batch, then a count up in the random bits, instead of a
/// system call for randomness per record.
struct Ids {
    next: u128,
}

impl Ids {
    /// Ids from now, sorting after `last`.
    fn after(last: Option<RecordId>) -> Self {
        // Bit 61 is the top random bit; clearing it leaves room to count
        // up without reaching the variant bits above it.
        let fresh = RecordId::now_v7().as_u128() & !(1u128 << 61);
        let next = match last {
            Some(last) if last.as_u128() >= fresh => last.as_u128() + 1,
            _ => fresh,
        };
        Self { next }
    }

    fn next(&mut self) -> RecordId {
        let id = RecordId::from_u128(self.next);
        self.next += 1;
        id
    }
}

enum Decision {
    /// Create a record; the rule that decided it, if any.
    Create(Option<usize>),
    Update(RecordId),
    Skip(String),
}

/// A batch of rows decided by a load step: each row's outcome, and what
/// the batch writes.
pub struct Decided {
    outcomes: Vec<Outcome>,
    batch: Batch,
    write: WriteBatch,
}

impl Decided {
    /// Each row's outcome, in row order.
    pub fn outcomes(&self) -> &[Outcome] {
        &self.outcomes
    }
}

/// What a batch has done so far, so that later rows see it. A record's
/// values are those of the step's mapped fields, by mapping position.
struct Batch {
    /// Records created in this batch, in order.
    created: Vec<RecordId>,
    /// Mapped field values of records found, created or touched.
    current: HashMap<RecordId, Vec<Value>>,
    /// Which mapped fields of existing records changed.
    changes: HashMap<RecordId, Vec<bool>>,
    /// Records with changes, in the order they were first changed.
    changed: Vec<RecordId>,
    /// Per rule, the keys of records created or updated in this batch.
    keys: Vec<HashMap<MatchKey, Matches>>,
}

/// Record ids matching a key: nearly always one, kept without allocating.
type Matches = smallvec::SmallVec<[RecordId; 1]>;

/// A row's key for each matching rule (none when its variable is null).
type Keys = smallvec::SmallVec<[Option<MatchKey>; 2]>;

impl Batch {
    /// A batch of up to `rows` rows matched by `rules` rules.
    fn with_capacity(rows: usize, rules: usize) -> Self {
        Self {
            created: Vec::with_capacity(rows),
            current: HashMap::with_capacity_and_hasher(rows, Default::default()),
            changes: HashMap::default(),
            changed: Vec::new(),
            keys: (0..rules)
                .map(|_| HashMap::with_capacity_and_hasher(rows, Default::default()))
                .collect(),
        }
    }

    /// Empties the batch, keeping what its maps have allocated.
    fn clear(&mut self) {
        self.created.clear();
        self.current.clear();
        self.changes.clear();
        self.changed.clear();
        self.keys.iter_mut().for_each(HashMap::clear);
    }

    fn create(&mut self, id: RecordId, values: Vec<Value>, keys: Keys) {
        self.created.push(id);
        self.current.insert(id, values);
        self.index(id, keys);
    }

    /// Indexes record `id` under each rule's key of the row that wrote it.
    fn index(&mut self, id: RecordId, keys: Keys) {
        for (r, key) in keys.into_iter().enumerate() {
            if let (Some(k), Some(by_key)) = (key, self.keys.get_mut(r)) {
                let ids = by_key.entry(k).or_default();
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
    }

    /// Records of this batch whose rule-`rule` key is `key`.
    fn matching(&self, rule: usize, key: Option<&MatchKey>) -> &[RecordId] {
        key.zip(self.keys.get(rule))
            .and_then(|(k, by_key)| by_key.get(k))
            .map_or(&[], |ids| ids.as_slice())
    }

    /// What the batch writes: its creates, and the changed fields of the
    /// records it updates.
    fn write(&self, fields: &[String]) -> WriteBatch {
        let creates = self
            .created
            .iter()
            .map(|id| Write {
                id: *id,
                values: self
                    .current
                    .get(id)
                    .map(|values| values.iter().cloned().map(Some).collect())
                    .unwrap_or_default(),
            })
            .collect();
        // Updates in the order of their rows, not hash order: neighbouring
        // rows tend to touch neighbouring pages.
        let created: HashSet<RecordId> = self.created.iter().copied().collect();
        let updates = self
            .changed
            .iter()
            .filter(|id| !created.contains(*id))
            .filter_map(|id| {
                let changes = self.changes.get(id)?;
                if !changes.contains(&true) {
                    return None;
                }
                let values = self.current.get(id)?;
                Some(Write {
                    id: *id,
                    values: values
                        .iter()
                        .zip(changes)
                        .map(|(v, changed)| changed.then(|| v.clone()))
                        .collect(),
                })
            })
            .collect();
        WriteBatch {
            fields: fields.to_vec(),
            creates,
            updates,
            tally: None,
        }
    }
}

/// Counts the outcomes of a batch.
pub fn count(outcomes: &[Outcome]) -> Counts {
    let mut c = Counts::default();
    for o in outcomes {
        c.add(o);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connector::Connector;
    use crate::objects::Objects;
    use crate::store::SqliteStore;

    const OBJECTS: &str = r#"
[[objects]]
name = "contact"
  [[objects.fields]]
  name = "email"
  type = "email"
  unique = true
  [[objects.fields]]
  name = "city"
  type = "text"
  [[objects.fields]]
  name = "stage"
  type = "dropdown"
  options = ["Lead", "Customer"]
  [[objects.fields]]
  name = "company"
  type = "relation"
  object = "contact"
"#;

    fn step(rules: &str, fields: &str) -> LoadDef {
        let text = format!(
            "api_name = \"c\"\ntype = \"spreadsheet\"\n\
             [[variables]]\nname = \"email\"\nscope = \"s\"\ncolumn = \"email\"\ntype = \"email\"\n\
             [[variables]]\nname = \"city\"\nscope = \"s\"\ncolumn = \"city\"\ntype = \"string\"\n\
             [[variables]]\nname = \"first\"\nscope = \"s\"\ncolumn = \"first\"\ntype = \"string\"\n\
             [[variables]]\nname = \"last\"\nscope = \"s\"\ncolumn = \"last\"\ntype = \"string\"\n\
             [[variables]]\nname = \"stage\"\nscope = \"s\"\ncolumn = \"stage\"\ntype = \"string\"\n\
             [[variables]]\nname = \"company\"\nscope = \"s\"\ncolumn = \"company\"\ntype = \"string\"\n\
             [[loads]]\norder = 1\nscope = \"s\"\nobject = \"contact\"\n{rules}{fields}"
        );
        Connector::from_toml(&text).expect("connector").loads.remove(0)
    }

    fn rule(no: &str, single: &str, multiple: &str) -> String {
        format!(
            "[[loads.match]]\nfield = \"email\"\nvariable = \"email\"\nno_match = \"{no}\"\nsingle_match = \"{single}\"\nmultiple_match = \"{multiple}\"\n"
        )
    }

    fn field(name: &str, vars: &str, conflict: &str) -> String {
        format!("[[loads.fields]]\nfield = \"{name}\"\nvariables = [{vars}]\nconflict = \"{conflict}\"\n")
    }

    fn row(pairs: &[(&str, Option<&str>)]) -> Row {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.map_or(Value::Null, |s| Value::Text(s.into()))))
            .collect()
    }

    fn object() -> ObjectDef {
        Objects::from_toml(OBJECTS).expect("objects").objects.remove(0)
    }

    fn upsert() -> LoadDef {
        step(
            &rule("create_new", "update_current", "do_not_upload"),
            &(field("email", "\"email\"", "overwrite") + &field("city", "\"city\"", "overwrite")),
        )
    }

    fn city(store: &SqliteStore, id: RecordId) -> Value {
        stored(store, id, "city")
    }

    /// Field `name` of the stored record `id`.
    fn stored(store: &SqliteStore, id: RecordId, name: &str) -> Value {
        store.get("w", &object(), &[id]).expect("get")[0]
            .as_ref()
            .expect("record")
            .fields[name]
            .clone()
    }

    #[test]
    fn creates_then_updates_on_a_second_run() {
        let store = Arc::new(SqliteStore::in_memory().expect("store"));
        let (obj, def) = (object(), upsert());
        let s = LoadStep::new(def.clone(), obj.clone(), "w", store.clone(), false).expect("step");
        let first = s
            .load(&[row(&[("email", Some("a@x.io")), ("city", Some("Oslo"))])])
            .expect("load");
        let Outcome::Created(id) = first[0] else {
            panic!("{first:?}")
        };
        let second = s
            .load(&[row(&[("email", Some("a@x.io")), ("city", Some("Bergen"))])])
            .expect("load");
        assert_eq!(second, vec![Outcome::Updated(id)]);
        assert_eq!(store.count("w", "contact").expect("count"), 1);
        assert_eq!(city(&store, id), Value::Text("Bergen".into()));
    }

    #[test]
    fn a_record_created_by_a_rule_carries_its_key_so_the_next_run_updates_it() {
        let store = Arc::new(SqliteStore::in_memory().expect("store"));
        // Matched on email, which no mapping writes; the actions are left
        // to their defaults.
        let def = step(
            "[[loads.match]]\nfield = \"email\"\nvariable = \"email\"\n",
            &field("city", "\"city\"", "overwrite"),
        );
        assert_eq!(
            (
                def.matching[0].no_match,
                def.matching[0].single_match,
                def.matching[0].multiple_match
            ),
            (
                NoMatchAction::CreateNew,
                SingleMatchAction::UpdateCurrent,
                MultipleMatchAction::DoNotUpload
            )
        );
        let s = LoadStep::new(def, object(), "w", store.clone(), false).expect("step");
        let rows = [
            row(&[("email", Some("a@x.io")), ("city", Some("Oslo"))]),
            row(&[("email", Some("b@x.io")), ("city", Some("Rome"))]),
        ];
        let first = s.load(&rows).expect("load");
        assert!(first.iter().all(|o| matches!(o, Outcome::Created(_))), "{first:?}");
        let id = first[0].record().expect("created");
        assert_eq!(stored(&store, id, "email"), Value::Text("a@x.io".into()));
        let second = s.load(&rows).expect("load");
        assert!(second.iter().all(|o| matches!(o, Outcome::Updated(_))), "{second:?}");
        assert_eq!(store.count("w", "contact").expect("count"), 2);
    }

    #[test]
    fn a_record_created_by_a_later_rule_carries_that_rules_key() {
        let store = Arc::new(SqliteStore::in_memory().expect("store"));
        // Work e-mail first, private e-mail second, both on `email`.
        let def = step(
            "[[loads.match]]\nfield = \"email\"\nvariable = \"first\"\nno_match = \"next_rule\"\n\
             [[loads.match]]\nfield = \"email\"\nvariable = \"last\"\n",
            &field("city", "\"city\"", "overwrite"),
        );
        let s = LoadStep::new(def, object(), "w", store.clone(), false).expect("step");
        let rows = [row(&[
            ("first", None),
            ("last", Some("p@x.io")),
            ("city", Some("Oslo")),
        ])];
        let first = s.load(&rows).expect("load");
        let id = first[0].record().expect("created");
        assert_eq!(stored(&store, id, "email"), Value::Text("p@x.io".into()));
        assert_eq!(s.load(&rows).expect("load"), vec![Outcome::Updated(id)]);
    }

    #[test]
    fn created_ids_are_v7_and_in_creation_order_across_batches() {
        let store = Arc::new(SqliteStore::in_memory().expect("store"));
        let (obj, def) = (object(), upsert());
        let s = LoadStep::new(def.clone(), obj.clone(), "w", store.clone(), false).expect("step");
        let mut ids = Vec::new();
        for b in 0..3 {
            let emails: Vec<String> = (0..50).map(|i| format!("u{b}-{i}@x.io")).collect();
            let rows: Vec<Row> = emails.iter().map(|e| row(&[("email", Some(e))])).collect();
            ids.extend(s.load(&rows).expect("load").iter().filter_map(Outcome::record));
        }
        assert_eq!(ids.len(), 150);
        assert!(ids.iter().all(|id| id.get_version_num() == 7), "{ids:?}");
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        assert_eq!(store.count("w", "contact").expect("count"), 150);
    }

    #[test]
    fn duplicate_keys_in_one_batch_behave_as_if_loaded_one_after_the_other() {
        let store = Arc::new(SqliteStore::in_memory().expect("store"));
        let (obj, def) = (object(), upsert());
        let s = LoadStep::new(def.clone(), obj.clone(), "w", store.clone(), false).expect("step");
        let out = s
            .load(&[
                row(&[("email", Some("a@x.io")), ("city", Some("Oslo"))]),
                row(&[("email", Some("a@x.io")), ("city", Some("Rome"))]),
            ])
            .expect("load");
        let Outcome::Created(id) = out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(out[1], Outcome::Updated(id));
        assert_eq!(store.count("w", "contact").expect("count"), 1);
        assert_eq!(city(&store, id), Value::Text("Rome".into()));
    }

    #[test]
    fn a_batch_sees_the_records_of_the_batch_before_it_while_that_one_commits() {
        let store = Arc::new(SqliteStore::in_memory().expect("store"));
        let (obj, def) = (object(), upsert());
        let s = LoadStep::new(def.clone(), obj.clone(), "w", store.clone(), false).expect("step");
        s.load(&[row(&[("email", Some("b@x.io")), ("city", Some("Oslo"))])])
            .expect("seed");
        let first = s
            .decide(
                &[
                    row(&[("email", Some("a@x.io")), ("city", Some("Oslo"))]),
                    row(&[("email", Some("b@x.io")), ("city", Some("Rome"))]),
                ],
                None,
            )
            .expect("first");
        let [Outcome::Created(a), Outcome::Updated(b)] = first.outcomes() else {
            panic!("{:?}", first.outcomes())
        };
        // Nothing of the first batch is in the store yet.
        assert_eq!(store.count("w", "contact").expect("count"), 1);
        let second = s
            .decide(
                &[
                    row(&[("email", Some("a@x.io")), ("city", Some("Lima"))]),
                    row(&[("email", Some("b@x.io")), ("city", Some("Rome"))]),
                ],
                Some(&first),
            )
            .expect("second");
        assert_eq!(second.outcomes(), [Outcome::Updated(*a), Outcome::Updated(*b)]);
        s.commit(&first).expect("commit first");
        s.commit(&second).expect("commit second");
        assert_eq!(store.count("w", "contact").expect("count"), 2);
        assert_eq!(city(&store, *a), Value::Text("Lima".into()));
        // b's city was Rome as of the first batch: the second changes nothing.
        assert_eq!(city(&store, *b), Value::Text("Rome".into()));
        assert!(second.write.updates.iter().all(|w| w.id != *b), "{:?}", second.write);
    }

    #[test]
    fn every_matching_action() {
        let store = Arc::new(SqliteStore::in_memory().expect("store"));
        let obj = object();
        let seed = upsert();
        let s = LoadStep::new(seed.clone(), obj.clone(), "w", store.clone(), false).expect("step");
        s.load(&[row(&[("email", Some("a@x.io"))])]).expect("seed");

        let cases = [
            (
                "do_not_upload",
                "update_current",
                "do_not_upload",
                "new@x.io",
                "skipped",
            ),
            ("create_new", "do_not_upload", "do_not_upload", "a@x.io", "skipped"),
            ("next_rule", "update_current", "do_not_upload", "zz@x.io", "skipped"),
            ("create_new", "next_rule", "do_not_upload", "a@x.io", "skipped"),
            ("create_new", "update_current", "do_not_upload", "b@x.io", "created"),
            ("create_new", "update_current", "do_not_upload", "a@x.io", "updated"),
        ];
        for (no, single, multiple, email, expected) in cases {
            let def = step(&rule(no, single, multiple), &field("email", "\"email\"", "overwrite"));
            let s = LoadStep::new(def.clone(), obj.clone(), "w", store.clone(), false).expect("step");
            let out = s.load(&[row(&[("email", Some(email))])]).expect("load");
            let got = match &out[0] {
                Outcome::Created(_) => "created",
                Outcome::Updated(_) => "updated",
                Outcome::Skipped(_) => "skipped",
                Outcome::Failed(_) => "failed",
            };
            assert_eq!(got, expected, "{no}/{single}/{multiple} on {email}: {out:?}");
        }
        // A second rule takes over after next_rule.
        let two = step(
            &(rule("next_rule", "next_rule", "next_rule")
                + "[[loads.match]]\nfield = \"city\"\nvariable = \"city\"\nno_match = \"create_new\"\nsingle_match = \"update_current\"\nmultiple_match = \"do_not_upload\"\n"),
            &field("city", "\"city\"", "overwrite"),
        );
        let s = LoadStep::new(two.clone(), obj.clone(), "w", store.clone(), false).expect("step");
        let out = s
            .load(&[row(&[("email", Some("q@x.io")), ("city", Some("Paris"))])])
            .expect("load");
        assert!(matches!(out[0], Outcome::Created(_)), "{out:?}");
    }

    #[test]
    fn multiple_matches_follow_their_action() {
        let store = Arc::new(SqliteStore::in_memory().expect("store"));
        let obj = object();
        let by_city = |multiple: &str| {
            step(
                &format!(
                    "[[loads.match]]\nfield = \"city\"\nvariable = \"city\"\nno_match = \"create_new\"\nsingle_match = \"update_current\"\nmultiple_match = \"{multiple}\"\n"
                ),
                &field("email", "\"email\"", "overwrite"),
            )
        };
        let seed = upsert();
        let s = LoadStep::new(seed.clone(), obj.clone(), "w", store.clone(), false).expect("step");
        s.load(&[
            row(&[("email", Some("a@x.io")), ("city", Some("Oslo"))]),
            row(&[("email", Some("b@x.io")), ("city", Some("Oslo"))]),
        ])
        .expect("seed");
        let def = by_city("do_not_upload");
        let out = LoadStep::new(def.clone(), obj.clone(), "w", store.clone(), false)
            .expect("step")
            .load(&[row(&[("city", Some("Oslo"))])])
            .expect("load");
        assert!(
            matches!(&out[0], Outcome::Skipped(r) if r.contains("2 records match")),
            "{out:?}"
        );
        let def = by_city("next_rule");
        let out = LoadStep::new(def.clone(), obj.clone(), "w", store.clone(), false)
            .expect("step")
            .load(&[row(&[("city", Some("Oslo"))])])
            .expect("load");
        assert!(
            matches!(&out[0], Outcome::Skipped(r) if r.contains("every rule said next_rule")),
            "{out:?}"
        );
    }

    #[test]
    fn conflict_rules() {
        let store = Arc::new(SqliteStore::in_memory().expect("store"));
        let obj = object();
        let seed = upsert();
        let s = LoadStep::new(seed.clone(), obj.clone(), "w", store.clone(), false).expect("step");
        let out = s
            .load(&[
                row(&[("email", Some("a@x.io")), ("city", Some("Oslo"))]),
                row(&[("email", Some("b@x.io"))]),
            ])
            .expect("seed");
        let (a, b) = (out[0].record().expect("a"), out[1].record().expect("b"));
        for (conflict, input, expect_a, expect_b) in [
            ("only_update_blank", Some("Rome"), "Oslo", Some("Rome")),
            ("overwrite_except_null", None, "Oslo", Some("Rome")),
            ("overwrite_except_null", Some("Lima"), "Lima", Some("Lima")),
            ("overwrite", None, "", None),
        ] {
            let def = step(
                &rule("create_new", "update_current", "do_not_upload"),
                &field("city", "\"city\"", conflict),
            );
            let s = LoadStep::new(def.clone(), obj.clone(), "w", store.clone(), false).expect("step");
            s.load(&[
                row(&[("email", Some("a@x.io")), ("city", input)]),
                row(&[("email", Some("b@x.io")), ("city", input)]),
            ])
            .expect("load");
            let want_a = if expect_a.is_empty() {
                Value::Null
            } else {
                Value::Text(expect_a.into())
            };
            assert_eq!(city(&store, a), want_a, "{conflict} {input:?}");
            assert_eq!(
                city(&store, b),
                expect_b.map_or(Value::Null, |s| Value::Text(s.into())),
                "{conflict} {input:?}"
            );
        }
    }

    #[test]
    fn joined_variables_dropdown_and_relation() {
        let store = Arc::new(SqliteStore::in_memory().expect("store"));
        let obj = object();
        let def = step(
            &rule("create_new", "update_current", "do_not_upload"),
            &(field("email", "\"email\"", "overwrite")
                + &field("name", "\"first\", \"last\"", "overwrite")
                + &field("stage", "\"stage\"", "overwrite")
                + &field("company", "\"company\"", "overwrite")),
        );
        let s = LoadStep::new(def.clone(), obj.clone(), "w", store.clone(), false).expect("step");
        let parent = RecordId::now_v7().to_string();
        let out = s
            .load(&[
                row(&[
                    ("email", Some("a@x.io")),
                    ("first", Some("Ada")),
                    ("last", Some("Lovelace")),
                    ("stage", Some("customer")),
                    ("company", Some(&parent)),
                ]),
                row(&[("email", Some("b@x.io")), ("stage", Some("Prospect"))]),
                row(&[("email", Some("c@x.io")), ("company", Some("not-an-id"))]),
            ])
            .expect("load");
        let id = out[0].record().expect("created");
        let rec = store.get("w", &obj, &[id]).expect("get")[0].clone().expect("record");
        assert_eq!(rec.fields["name"], Value::Text("Ada Lovelace".into()));
        assert_eq!(rec.fields["stage"], Value::Text("Customer".into()), "matched by label");
        assert_eq!(rec.fields["company"], Value::Text(parent));
        assert!(
            matches!(&out[1], Outcome::Failed(r) if r.contains("`Prospect` is not one of Lead, Customer")),
            "{out:?}"
        );
        assert!(
            matches!(&out[2], Outcome::Failed(r) if r.contains("not a record id")),
            "{out:?}"
        );
        assert_eq!(
            count(&out),
            Counts {
                total: 3,
                created: 1,
                updated: 0,
                skipped: 0,
                failed: 2
            }
        );
        assert_eq!(
            store.count("w", "contact").expect("count"),
            1,
            "failed rows write nothing"
        );
    }

    #[test]
    fn a_dry_run_decides_everything_and_writes_nothing() {
        let store = Arc::new(SqliteStore::in_memory().expect("store"));
        let (obj, def) = (object(), upsert());
        let s = LoadStep::new(def.clone(), obj.clone(), "w", store.clone(), true).expect("step");
        let out = s
            .load(&[row(&[("email", Some("a@x.io"))]), row(&[("email", Some("a@x.io"))])])
            .expect("load");
        assert!(matches!(out[0], Outcome::Created(_)));
        assert!(matches!(out[1], Outcome::Updated(_)));
        assert_eq!(store.count("w", "contact").expect("count"), 0);
    }
}
