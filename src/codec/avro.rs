//! Avro datums: schema resolution planned once per writer schema, then decoding that reads
//! only the fields scoring needs.
//!
//! A [`Plan`] is built once for each (writer schema, reader schema) pair by Avro's resolution
//! rules: writer fields the reader lacks are skipped, reader fields the writer lacks take the
//! reader's default, fields are matched by name or by the reader's aliases, `int` promotes to
//! `long`, `float` and `double`, `long` to `float` and `double`, `float` to `double`, `string`
//! and `bytes` into each other, enum symbols map by name, and unions resolve branch by branch.
//! Decoding a datum then walks the plan: fields scoring reads become [`Slot`]s, every other
//! field is skipped by its length without allocating. Nothing is resolved per record.
//!
//! The decoder never trusts a length, a count or a union index from the payload: all are
//! checked against the bytes that remain, and recursive schemas are cut at [`MAX_DEPTH`], so
//! arbitrary bytes become [`RecordErrorKind::InvalidAvro`], never a panic, a huge allocation
//! or a stall.
//!
//! Values reach the encoder as the JSON values their twins would be (strings, enum symbols,
//! booleans, ints and longs), except `float` and `double`, which stay `f64` so NaN and
//! infinity are refused as `not_finite`. Timestamps with a logical type become epoch
//! milliseconds: `timestamp-millis` as written, `timestamp-micros` and `timestamp-nanos`
//! divided down, `date` as midnight UTC.

use std::collections::HashMap;

use apache_avro::schema::{Name, RecordField, Schema};
use serde_json::Value;

use crate::error::{RecordError, RecordErrorKind};
use crate::event::{assemble, slot_count, slot_of, Event, Slot};
use crate::features::FeatureEncoder;

/// The deepest nesting of records, arrays, maps and unions a datum may have.
pub const MAX_DEPTH: usize = 64;

/// How a datum of one writer schema is read as the reader schema: built once per writer.
#[derive(Debug)]
pub struct Plan {
    /// One step per writer field, in the writer's order.
    steps: Vec<Step>,
    /// Reader fields the writer lacks, with their default.
    defaults: Vec<(String, Slot<'static>)>,
    /// How to skip each writer type the steps refer to.
    skips: Vec<Skip>,
}

#[derive(Debug)]
struct Step {
    /// The reader field this writer field feeds; `None` when the reader does not have it.
    reader_name: Option<String>,
    /// How to read it as the reader's type.
    read: Read,
    /// How to skip it.
    skip: usize,
}

/// How a writer value becomes a [`Slot`] of the reader's type.
#[derive(Debug, Clone)]
enum Read {
    Null,
    Bool,
    /// A writer `int`, read as the reader's number type.
    Int(Num),
    /// A writer `long`, read as the reader's number type.
    Long(Num),
    Float,
    Double,
    /// A writer `string` or `bytes` read as a reader `string`.
    Text,
    /// Writer symbol index → reader symbol (`None`: the reader has neither it nor a default).
    Enum(Vec<Option<String>>),
    /// Writer branch index → how that branch reads (`None`: it resolves to no reader branch).
    Union(Vec<Option<Read>>),
    /// A value no feature reads, skipped: (what it is, its skip).
    Other(&'static str, usize),
}

/// The reader's view of an integer.
#[derive(Debug, Clone, Copy)]
enum Num {
    /// An integer, scaled to epoch milliseconds if the reader's logical type says so.
    Long(Scale),
    /// A reader `float` or `double`.
    Double,
}

#[derive(Debug, Clone, Copy)]
enum Scale {
    Same,
    Div(i64),
    Mul(i64),
}

/// How to skip one writer type.
#[derive(Debug, Clone)]
enum Skip {
    /// `null`, `fixed(0)`, or a record of those: nothing to read.
    Zero,
    /// A boolean: one byte.
    Byte,
    /// An `int`, `long` or enum index.
    Varint,
    /// A `fixed` of this size, or a `float` (4) or `double` (8).
    Fixed(usize),
    /// `bytes` or `string`: a length and that many bytes.
    Sized,
    Record(Vec<usize>),
    Array(usize),
    Map(usize),
    Union(Vec<usize>),
}

/// The physical kind of a schema, logical types seen through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Null,
    Bool,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    Text,
    Enum,
    Fixed,
    Record,
    Array,
    Map,
    Union,
}

fn kind(s: &Schema) -> Kind {
    match s {
        Schema::Null => Kind::Null,
        Schema::Boolean => Kind::Bool,
        Schema::Int | Schema::Date | Schema::TimeMillis => Kind::Int,
        Schema::Long
        | Schema::TimeMicros
        | Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::TimestampNanos
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos => Kind::Long,
        Schema::Float => Kind::Float,
        Schema::Double => Kind::Double,
        Schema::Bytes | Schema::BigDecimal => Kind::Bytes,
        Schema::String | Schema::Uuid => Kind::Text,
        Schema::Decimal(d) => kind(&d.inner),
        Schema::Enum(_) => Kind::Enum,
        Schema::Fixed(_) | Schema::Duration => Kind::Fixed,
        Schema::Record(_) => Kind::Record,
        Schema::Array(_) => Kind::Array,
        Schema::Map(_) => Kind::Map,
        Schema::Union(_) => Kind::Union,
        // Refs are looked up before anything asks for a kind.
        Schema::Ref { .. } => Kind::Record,
    }
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Null => "null",
        Kind::Bool => "boolean",
        Kind::Int => "int",
        Kind::Long => "long",
        Kind::Float => "float",
        Kind::Double => "double",
        Kind::Bytes => "bytes",
        Kind::Text => "string",
        Kind::Enum => "an enum",
        Kind::Fixed => "a fixed",
        Kind::Record => "a record",
        Kind::Array => "an array",
        Kind::Map => "a map",
        Kind::Union => "a union",
    }
}

/// The scale from an integer's logical type to the epoch milliseconds the encoder reads.
fn scale(s: &Schema) -> Scale {
    match s {
        Schema::TimestampMicros | Schema::LocalTimestampMicros => Scale::Div(1_000),
        Schema::TimestampNanos | Schema::LocalTimestampNanos => Scale::Div(1_000_000),
        Schema::Date => Scale::Mul(86_400_000),
        _ => Scale::Same,
    }
}

/// The unit of an integer: the writer's logical type says what it wrote (micros stay micros
/// whatever the reader calls them); without one, the reader's says how to read it.
fn unit(w: &Schema, r: &Schema) -> Scale {
    match scale(w) {
        Scale::Same if matches!(w, Schema::Int | Schema::Long) => scale(r),
        s => s,
    }
}

/// The named types of a schema, by full name.
#[derive(Default)]
struct Names<'s>(HashMap<String, &'s Schema>);

fn full_name(name: &Name) -> String {
    match name.namespace.as_deref() {
        Some(ns) if !ns.is_empty() => format!("{ns}.{}", name.name),
        _ => name.name.clone(),
    }
}

impl<'s> Names<'s> {
    fn of(schema: &'s Schema) -> Self {
        let mut names = Names::default();
        names.collect(schema);
        names
    }

    fn collect(&mut self, s: &'s Schema) {
        match s {
            Schema::Record(r) if self.0.insert(full_name(&r.name), s).is_none() => {
                for f in &r.fields {
                    self.collect(&f.schema);
                }
            }
            Schema::Enum(e) => {
                self.0.insert(full_name(&e.name), s);
            }
            Schema::Fixed(f) => {
                self.0.insert(full_name(&f.name), s);
            }
            Schema::Array(a) => self.collect(&a.items),
            Schema::Map(m) => self.collect(&m.types),
            Schema::Union(u) => u.variants().iter().for_each(|v| self.collect(v)),
            Schema::Decimal(d) => self.collect(&d.inner),
            _ => {}
        }
    }

    /// `s` with a reference looked up.
    fn deref(&self, s: &'s Schema) -> Result<&'s Schema, String> {
        match s {
            Schema::Ref { name } => self
                .0
                .get(&full_name(name))
                .or_else(|| {
                    self.0
                        .iter()
                        .find(|(k, _)| k.rsplit('.').next() == Some(name.name.as_str()))
                        .map(|(_, v)| v)
                })
                .copied()
                .ok_or_else(|| format!("the schema refers to an undefined type {}", name.name)),
            other => Ok(other),
        }
    }
}

/// Builds the skip arena of a writer schema.
struct Skips<'s> {
    names: &'s Names<'s>,
    arena: Vec<Skip>,
    /// Named types already in the arena (so recursive types terminate).
    named: HashMap<String, usize>,
}

impl<'s> Skips<'s> {
    fn add(&mut self, s: &'s Schema) -> Result<usize, String> {
        let s = self.names.deref(s)?;
        let named = match s {
            Schema::Record(r) => Some(full_name(&r.name)),
            _ => None,
        };
        if let Some(id) = named.as_ref().and_then(|n| self.named.get(n)) {
            return Ok(*id);
        }
        let id = self.arena.len();
        self.arena.push(Skip::Zero);
        if let Some(n) = named {
            self.named.insert(n, id);
        }
        let skip = match s {
            Schema::Null => Skip::Zero,
            Schema::Boolean => Skip::Byte,
            Schema::Float => Skip::Fixed(4),
            Schema::Double => Skip::Fixed(8),
            Schema::Fixed(f) => Skip::Fixed(f.size),
            Schema::Duration => Skip::Fixed(12),
            Schema::Decimal(d) => return self.add_into(id, &d.inner),
            Schema::Enum(_) => Skip::Varint,
            Schema::Record(r) => {
                let fields = r
                    .fields
                    .iter()
                    .map(|f| self.add(&f.schema))
                    .collect::<Result<Vec<_>, _>>()?;
                if fields.iter().all(|&f| matches!(self.arena[f], Skip::Zero)) {
                    Skip::Zero
                } else {
                    Skip::Record(fields)
                }
            }
            Schema::Array(a) => Skip::Array(self.add(&a.items)?),
            Schema::Map(m) => Skip::Map(self.add(&m.types)?),
            Schema::Union(u) => Skip::Union(
                u.variants()
                    .iter()
                    .map(|v| self.add(v))
                    .collect::<Result<_, _>>()?,
            ),
            other => match kind(other) {
                Kind::Int | Kind::Long => Skip::Varint,
                _ => Skip::Sized,
            },
        };
        self.arena[id] = skip;
        Ok(id)
    }

    fn add_into(&mut self, id: usize, inner: &'s Schema) -> Result<usize, String> {
        let inner = self.add(inner)?;
        self.arena[id] = self.arena[inner].clone();
        Ok(id)
    }
}

/// Resolution of one writer type against one reader type.
struct Resolver<'s> {
    writer: &'s Names<'s>,
    reader: &'s Names<'s>,
    skips: Skips<'s>,
}

impl<'s> Resolver<'s> {
    fn resolve(&mut self, w: &'s Schema, r: &'s Schema) -> Result<Read, String> {
        let w = self.writer.deref(w)?;
        let r = self.reader.deref(r)?;
        if let Schema::Union(u) = w {
            let branches: Vec<Option<Read>> = u
                .variants()
                .iter()
                .map(|b| self.resolve(b, r).ok())
                .collect();
            if branches.iter().all(Option::is_none) {
                return Err(format!(
                    "no branch of the writer's union resolves to the reader's {}",
                    kind_name(kind(r))
                ));
            }
            return Ok(Read::Union(branches));
        }
        if let Schema::Union(u) = r {
            // The first reader branch the writer's type resolves to, as Avro says.
            for b in u.variants() {
                if let Ok(read) = self.resolve(w, b) {
                    return Ok(read);
                }
            }
            return Err(format!(
                "the writer's {} matches no branch of the reader's union",
                kind_name(kind(w))
            ));
        }
        let (wk, rk) = (kind(w), kind(r));
        let read = match (wk, rk) {
            (Kind::Null, Kind::Null) => Read::Null,
            (Kind::Bool, Kind::Bool) => Read::Bool,
            (Kind::Int, Kind::Int | Kind::Long) => Read::Int(Num::Long(unit(w, r))),
            (Kind::Int, Kind::Float | Kind::Double) => Read::Int(Num::Double),
            (Kind::Long, Kind::Long) => Read::Long(Num::Long(unit(w, r))),
            (Kind::Long, Kind::Float | Kind::Double) => Read::Long(Num::Double),
            (Kind::Float, Kind::Float | Kind::Double) => Read::Float,
            (Kind::Double, Kind::Double) => Read::Double,
            (Kind::Text | Kind::Bytes, Kind::Text) => Read::Text,
            (Kind::Enum, Kind::Enum) => {
                let (Schema::Enum(we), Schema::Enum(re)) = (w, r) else {
                    return Err("enum schemas expected".into());
                };
                Read::Enum(
                    we.symbols
                        .iter()
                        .map(|s| {
                            if re.symbols.contains(s) {
                                Some(s.clone())
                            } else {
                                re.default.clone()
                            }
                        })
                        .collect(),
                )
            }
            (Kind::Text | Kind::Bytes, Kind::Bytes)
            | (Kind::Fixed, Kind::Fixed)
            | (Kind::Record, Kind::Record)
            | (Kind::Array, Kind::Array)
            | (Kind::Map, Kind::Map) => {
                // Never read by a feature: skipped by the writer's shape, named for errors.
                let what = match rk {
                    Kind::Bytes => "Avro bytes",
                    Kind::Fixed => "an Avro fixed",
                    Kind::Record => "an Avro record",
                    Kind::Array => "an Avro array",
                    _ => "an Avro map",
                };
                Read::Other(what, self.skips.add(w)?)
            }
            _ => {
                return Err(format!(
                    "the writer's {} does not promote to the reader's {}",
                    kind_name(wk),
                    kind_name(rk)
                ))
            }
        };
        Ok(read)
    }
}

/// Parses an Avro schema that came from outside (a file, a registry, a container header).
///
/// apache-avro 0.21 panics, rather than erring, on a named type, namespace or alias that is
/// not a valid Avro name, so those are checked first; any other panic of its parser is
/// caught and reported as an error too.
pub fn parse_schema(text: &str) -> Result<Schema, String> {
    let json: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    check_names(&json)?;
    std::panic::catch_unwind(|| Schema::parse_str(text))
        .map_err(|_| "the Avro schema parser failed on it".to_owned())?
        .map_err(|e| e.to_string())
}

/// Whether `s` is an Avro full name: dot-separated `[A-Za-z_][A-Za-z0-9_]*` parts.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

fn check_names(v: &Value) -> Result<(), String> {
    match v {
        Value::Object(o) => {
            let named = matches!(
                o.get("type").and_then(Value::as_str),
                Some("record" | "enum" | "fixed" | "error")
            );
            if named {
                match o.get("name") {
                    Some(Value::String(n)) if valid_name(n) => {}
                    Some(n) => return Err(format!("{n} is not a valid Avro name")),
                    None => {}
                }
            }
            if let Some(Value::String(ns)) = o.get("namespace") {
                if !ns.is_empty() && !valid_name(ns) {
                    return Err(format!("{ns:?} is not a valid Avro namespace"));
                }
            }
            if let Some(Value::Array(aliases)) = o.get("aliases") {
                for a in aliases {
                    if !a.as_str().is_some_and(valid_name) {
                        return Err(format!("{a} is not a valid Avro alias"));
                    }
                }
            }
            o.values().try_for_each(check_names)
        }
        Value::Array(items) => items.iter().try_for_each(check_names),
        _ => Ok(()),
    }
}

/// A reader schema: a record whose fields name what events carry.
#[derive(Debug, Clone)]
pub struct ReaderSchema {
    schema: Schema,
}

impl ReaderSchema {
    /// Parses a reader schema; it must be a record.
    pub fn parse(text: &str) -> Result<Self, String> {
        let schema = parse_schema(text).map_err(|e| format!("not an Avro schema: {e}"))?;
        match &schema {
            Schema::Record(_) => Ok(ReaderSchema { schema }),
            _ => Err("an event schema must be an Avro record".into()),
        }
    }

    /// The parsed schema.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// The reader's fields.
    fn fields(&self) -> &[RecordField] {
        match &self.schema {
            Schema::Record(r) => &r.fields,
            _ => &[],
        }
    }

    /// Why `column` cannot feed a feature of kind `reads` (a short phrase, e.g. "a number"),
    /// or `None` when the reader schema has it with a type that can.
    pub fn unusable(&self, column: &str, reads: Reads) -> Option<String> {
        let names = Names::of(&self.schema);
        let Some(field) = self.fields().iter().find(|f| f.name == column) else {
            return Some(format!("the reader schema has no field {column:?}"));
        };
        let mut kinds = Vec::new();
        let mut pending = vec![&field.schema];
        while let Some(s) = pending.pop() {
            match names.deref(s) {
                Ok(Schema::Union(u)) => pending.extend(u.variants()),
                Ok(s) => kinds.push(kind(s)),
                Err(e) => return Some(e),
            }
        }
        let usable = |k: Kind| match reads {
            Reads::Number => matches!(k, Kind::Int | Kind::Long | Kind::Float | Kind::Double),
            Reads::Bool => matches!(k, Kind::Bool | Kind::Int | Kind::Long),
            Reads::Category => matches!(
                k,
                Kind::Text | Kind::Enum | Kind::Int | Kind::Long | Kind::Bool
            ),
            Reads::Timestamp => matches!(k, Kind::Text | Kind::Int | Kind::Long),
            Reads::Key => matches!(k, Kind::Text | Kind::Int | Kind::Long | Kind::Enum),
        };
        if kinds.iter().any(|&k| usable(k)) {
            None
        } else {
            Some(format!(
                "field {column:?} of the reader schema is {}, which cannot be read as {}",
                kinds
                    .iter()
                    .map(|&k| kind_name(k))
                    .collect::<Vec<_>>()
                    .join(" or "),
                reads.as_str()
            ))
        }
    }
}

/// What a feature (or the partition key) needs a field to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reads {
    /// A numeric feature.
    Number,
    /// A bool feature.
    Bool,
    /// A one-hot feature.
    Category,
    /// A time feature.
    Timestamp,
    /// The partition column.
    Key,
}

impl Reads {
    fn as_str(self) -> &'static str {
        match self {
            Reads::Number => "a number",
            Reads::Bool => "a bool",
            Reads::Category => "a category label",
            Reads::Timestamp => "a timestamp",
            Reads::Key => "a partition id (string or integer)",
        }
    }
}

impl Plan {
    /// Plans reading datums written with `writer` as `reader`.
    pub fn new(writer: &Schema, reader: &ReaderSchema) -> Result<Plan, String> {
        let wnames = Names::of(writer);
        let rnames = Names::of(&reader.schema);
        let Schema::Record(w) = wnames.deref(writer)? else {
            return Err("the writer schema is not a record".into());
        };
        let mut resolver = Resolver {
            writer: &wnames,
            reader: &rnames,
            skips: Skips {
                names: &wnames,
                arena: Vec::new(),
                named: HashMap::new(),
            },
        };
        let rfields = reader.fields();
        let mut fed = vec![false; rfields.len()];
        let mut steps = Vec::with_capacity(w.fields.len());
        for wf in &w.fields {
            let matched = rfields.iter().position(|rf| {
                rf.name == wf.name || rf.aliases.as_ref().is_some_and(|a| a.contains(&wf.name))
            });
            let skip = resolver.skips.add(&wf.schema)?;
            let (reader_name, read) = match matched {
                Some(i) => {
                    fed[i] = true;
                    let rf = &rfields[i];
                    let read = resolver
                        .resolve(&wf.schema, &rf.schema)
                        .map_err(|e| format!("field {:?}: {e}", rf.name))?;
                    (Some(rf.name.clone()), read)
                }
                None => (None, Read::Other("", skip)),
            };
            steps.push(Step {
                reader_name,
                read,
                skip,
            });
        }
        let mut defaults = Vec::new();
        for (rf, fed) in rfields.iter().zip(fed) {
            if fed {
                continue;
            }
            let Some(default) = &rf.default else {
                return Err(format!(
                    "the reader's field {:?} has no default and the writer schema does not have it",
                    rf.name
                ));
            };
            defaults.push((rf.name.clone(), default_slot(&rnames, &rf.schema, default)?));
        }
        Ok(Plan {
            steps,
            defaults,
            skips: resolver.skips.arena,
        })
    }

    /// Decodes one datum (the whole of `bytes`) into an event.
    pub fn decode(
        &self,
        bytes: &[u8],
        partition_column: &str,
        encoder: &FeatureEncoder,
    ) -> Result<Event, RecordError> {
        self.decode_into(bytes, partition_column, encoder, Vec::new())
    }

    /// [`Plan::decode`] writing the event's inputs into `inputs`, a recycled buffer
    /// ([`crate::spares`]).
    pub fn decode_into(
        &self,
        bytes: &[u8],
        partition_column: &str,
        encoder: &FeatureEncoder,
        inputs: Vec<f64>,
    ) -> Result<Event, RecordError> {
        let mut slots = vec![Slot::Absent; slot_count(encoder)];
        let mut cur = Cursor { bytes, pos: 0 };
        for step in &self.steps {
            let slot = step
                .reader_name
                .as_deref()
                .and_then(|n| slot_of(n, partition_column, encoder));
            let result = match slot {
                Some(i) => self.read(&step.read, &mut cur).map(|v| slots[i] = v),
                None => self.skip(step.skip, &mut cur, 0),
            };
            result.map_err(|e| e.at(step.reader_name.as_deref(), bytes.len()))?;
        }
        if cur.pos != bytes.len() {
            return Err(RecordError::new(
                RecordErrorKind::InvalidAvro,
                format!(
                    "Avro payload of {} bytes has {} bytes left over after the datum: not written with this schema?",
                    bytes.len(),
                    bytes.len() - cur.pos
                ),
            ));
        }
        for (name, default) in &self.defaults {
            if let Some(i) = slot_of(name, partition_column, encoder) {
                slots[i] = default.clone();
            }
        }
        assemble(&mut slots, partition_column, encoder, inputs)
    }

    /// The length of the datum at the start of `bytes` (datums in a container file are not
    /// delimited).
    pub fn datum_len(&self, bytes: &[u8]) -> Result<usize, RecordError> {
        let mut cur = Cursor { bytes, pos: 0 };
        for step in &self.steps {
            self.skip(step.skip, &mut cur, 0)
                .map_err(|e| e.at(step.reader_name.as_deref(), bytes.len()))?;
        }
        Ok(cur.pos)
    }

    fn read(&self, read: &Read, cur: &mut Cursor<'_>) -> Result<Slot<'static>, Fault> {
        Ok(match read {
            Read::Null => Slot::Json(Value::Null),
            Read::Bool => match cur.byte()? {
                0 => Slot::Json(Value::Bool(false)),
                1 => Slot::Json(Value::Bool(true)),
                b => return Err(Fault::Invalid(format!("boolean byte {b}"))),
            },
            Read::Int(num) => {
                let v = cur.long()?;
                if i32::try_from(v).is_err() {
                    return Err(Fault::Invalid(format!("int {v} out of range")));
                }
                number(v, *num)
            }
            Read::Long(num) => number(cur.long()?, *num),
            Read::Float => Slot::Float(f64::from(f32::from_le_bytes(cur.array()?))),
            Read::Double => Slot::Float(f64::from_le_bytes(cur.array()?)),
            Read::Text => {
                let raw = cur.sized()?;
                let text = std::str::from_utf8(raw)
                    .map_err(|_| Fault::Invalid("a string that is not UTF-8".into()))?;
                Slot::Json(Value::String(text.to_owned()))
            }
            Read::Enum(symbols) => {
                let i = cur.long()?;
                match usize::try_from(i).ok().and_then(|i| symbols.get(i)) {
                    Some(Some(s)) => Slot::Json(Value::String(s.clone())),
                    Some(None) => {
                        return Err(Fault::Incompatible(format!(
                            "enum symbol {i} is not in the reader schema, which has no default"
                        )))
                    }
                    None => return Err(Fault::Invalid(format!("enum index {i}"))),
                }
            }
            Read::Union(branches) => {
                let i = cur.long()?;
                match usize::try_from(i).ok().and_then(|i| branches.get(i)) {
                    Some(Some(b)) => self.read(b, cur)?,
                    Some(None) => {
                        return Err(Fault::Incompatible(format!(
                            "union branch {i} does not resolve to the reader schema"
                        )))
                    }
                    None => return Err(Fault::Invalid(format!("union index {i}"))),
                }
            }
            Read::Other(what, skip) => {
                self.skip(*skip, cur, 0)?;
                Slot::Other(what)
            }
        })
    }

    fn skip(&self, id: usize, cur: &mut Cursor<'_>, depth: usize) -> Result<(), Fault> {
        if depth > MAX_DEPTH {
            return Err(Fault::Invalid(format!("nesting deeper than {MAX_DEPTH}")));
        }
        let Some(skip) = self.skips.get(id) else {
            return Err(Fault::Invalid("schema plan out of range".into()));
        };
        match skip {
            Skip::Zero => {}
            Skip::Byte => {
                cur.byte()?;
            }
            Skip::Varint => {
                cur.long()?;
            }
            Skip::Fixed(n) => {
                cur.take(*n)?;
            }
            Skip::Sized => {
                cur.sized()?;
            }
            Skip::Record(fields) => {
                for &f in fields {
                    self.skip(f, cur, depth + 1)?;
                }
            }
            Skip::Array(item) | Skip::Map(item) => {
                let is_map = matches!(skip, Skip::Map(_));
                loop {
                    let count = cur.long()?;
                    if count == 0 {
                        break;
                    }
                    if count < 0 {
                        // A negative count is followed by the block's size in bytes.
                        let size = cur.long()?;
                        let size = usize::try_from(size)
                            .map_err(|_| Fault::Invalid(format!("block size {size}")))?;
                        cur.take(size)?;
                        continue;
                    }
                    let count = count as u64;
                    let zero = !is_map && matches!(self.skips.get(*item), Some(Skip::Zero));
                    if zero {
                        continue;
                    }
                    // Every item takes at least one byte: a count beyond the rest is garbage.
                    if count > (cur.bytes.len() - cur.pos) as u64 {
                        return Err(Fault::Truncated);
                    }
                    for _ in 0..count {
                        if is_map {
                            cur.sized()?;
                        }
                        self.skip(*item, cur, depth + 1)?;
                    }
                }
            }
            Skip::Union(branches) => {
                let i = cur.long()?;
                let b = usize::try_from(i)
                    .ok()
                    .and_then(|i| branches.get(i))
                    .ok_or_else(|| Fault::Invalid(format!("union index {i}")))?;
                self.skip(*b, cur, depth + 1)?;
            }
        }
        Ok(())
    }
}

fn number(v: i64, num: Num) -> Slot<'static> {
    match num {
        Num::Double => Slot::Float(v as f64),
        Num::Long(Scale::Same) => Slot::Json(Value::from(v)),
        Num::Long(Scale::Div(d)) => Slot::Json(Value::from(v.div_euclid(d))),
        Num::Long(Scale::Mul(m)) => Slot::Json(Value::from(v.saturating_mul(m))),
    }
}

/// A reader field's default as a slot.
fn default_slot(
    names: &Names<'_>,
    schema: &Schema,
    default: &Value,
) -> Result<Slot<'static>, String> {
    let s = names.deref(schema)?;
    // A union's default belongs to its first branch.
    let s = match s {
        Schema::Union(u) => match u.variants().first() {
            Some(first) => names.deref(first)?,
            None => return Err("an empty union".into()),
        },
        s => s,
    };
    Ok(match (kind(s), default) {
        (Kind::Float | Kind::Double, Value::Number(n)) => {
            Slot::Float(n.as_f64().unwrap_or(f64::NAN))
        }
        (Kind::Int | Kind::Long, Value::Number(n)) => match n.as_i64() {
            Some(v) => number(v, Num::Long(scale(s))),
            None => Slot::Json(default.clone()),
        },
        (Kind::Record | Kind::Array | Kind::Map | Kind::Fixed | Kind::Bytes, _) => {
            Slot::Other("an Avro default of a kind no feature reads")
        }
        _ => Slot::Json(default.clone()),
    })
}

/// What went wrong inside a datum, before it is told where.
#[derive(Debug)]
enum Fault {
    Truncated,
    Invalid(String),
    Incompatible(String),
}

impl Fault {
    fn at(self, field: Option<&str>, len: usize) -> RecordError {
        let field = field
            .map(|f| format!(" in field {f:?}"))
            .unwrap_or_default();
        match self {
            Fault::Truncated => RecordError::new(
                RecordErrorKind::InvalidAvro,
                format!("Avro payload of {len} bytes is truncated{field}"),
            ),
            Fault::Invalid(what) => RecordError::new(
                RecordErrorKind::InvalidAvro,
                format!("Avro payload of {len} bytes is not a datum of the writer schema: {what}{field}"),
            ),
            Fault::Incompatible(what) => RecordError::new(
                RecordErrorKind::IncompatibleSchema,
                format!("{what}{field}"),
            ),
        }
    }
}

/// Reads Avro's binary encoding from a slice, never past its end.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn byte(&mut self) -> Result<u8, Fault> {
        let b = *self.bytes.get(self.pos).ok_or(Fault::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Fault> {
        let end = self.pos.checked_add(n).ok_or(Fault::Truncated)?;
        let s = self.bytes.get(self.pos..end).ok_or(Fault::Truncated)?;
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Fault> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// A zig-zag varint `long`.
    fn long(&mut self) -> Result<i64, Fault> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = self.byte()?;
            if i == 9 && b > 1 {
                return Err(Fault::Invalid("a varint longer than 64 bits".into()));
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok((v >> 1) as i64 ^ -((v & 1) as i64));
            }
        }
        Err(Fault::Invalid("a varint longer than 64 bits".into()))
    }

    /// `bytes` or `string`: a length, then that many bytes.
    fn sized(&mut self) -> Result<&'a [u8], Fault> {
        let n = self.long()?;
        let n = usize::try_from(n).map_err(|_| Fault::Invalid(format!("length {n}")))?;
        self.take(n)
    }
}

/// Appends a zig-zag varint `long` (for the encoders of [`crate::codec`]).
pub fn write_long(buf: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        buf.push((z as u8 & 0x7f) | 0x80);
        z >>= 7;
    }
    buf.push(z as u8);
}

/// Appends an Avro `string` or `bytes`.
pub fn write_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    write_long(buf, b.len() as i64);
    buf.extend_from_slice(b);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{FeatureKind, FeatureSpec};

    fn encoder() -> FeatureEncoder {
        FeatureEncoder::new(&[
            FeatureSpec {
                column: "price".into(),
                kind: FeatureKind::Numeric,
                categories: None,
            },
            FeatureSpec {
                column: "ts".into(),
                kind: FeatureKind::HourOfDay,
                categories: None,
            },
        ])
        .unwrap()
    }

    const READER: &str = r#"{"type":"record","name":"E","fields":[
        {"name":"store_id","type":"string"},
        {"name":"price","type":"double"},
        {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}},
        {"name":"promo","type":"boolean","default":false}]}"#;

    fn datum(writer: &str, value: apache_avro::types::Value) -> Vec<u8> {
        let schema = Schema::parse_str(writer).unwrap();
        apache_avro::to_avro_datum(&schema, value).unwrap()
    }

    #[test]
    fn an_older_writer_with_an_int_price_and_extra_fields_resolves() {
        use apache_avro::types::Value as A;
        let writer = r#"{"type":"record","name":"E","fields":[
            {"name":"junk","type":{"type":"array","items":"string"}},
            {"name":"store_id","type":"string"},
            {"name":"price","type":"int"},
            {"name":"ts","type":{"type":"long","logicalType":"timestamp-micros"}}]}"#;
        let bytes = datum(
            writer,
            A::Record(vec![
                ("junk".into(), A::Array(vec![A::String("x".into())])),
                ("store_id".into(), A::String("S1".into())),
                ("price".into(), A::Int(3)),
                ("ts".into(), A::TimestampMicros(1_709_641_800_000_000)),
            ]),
        );
        let reader = ReaderSchema::parse(READER).unwrap();
        let plan = Plan::new(&Schema::parse_str(writer).unwrap(), &reader).unwrap();
        let e = plan.decode(&bytes, "store_id", &encoder()).unwrap();
        assert_eq!(e.partition, "S1");
        assert_eq!(e.inputs[0], 3.0);
        assert_eq!(e.inputs[1 + 12], 1.0, "micros read as 12:30 UTC");
    }

    #[test]
    fn garbage_and_truncation_are_invalid_avro_and_nan_is_not_finite() {
        use apache_avro::types::Value as A;
        let reader = ReaderSchema::parse(READER).unwrap();
        let plan = Plan::new(reader.schema(), &reader).unwrap();
        let good = datum(
            READER,
            A::Record(vec![
                ("store_id".into(), A::String("S1".into())),
                ("price".into(), A::Double(f64::NAN)),
                ("ts".into(), A::TimestampMillis(0)),
                ("promo".into(), A::Boolean(true)),
            ]),
        );
        let err = plan.decode(&good, "store_id", &encoder()).unwrap_err();
        assert_eq!(err.kind, RecordErrorKind::NotFinite);
        for cut in 0..good.len() {
            let err = plan
                .decode(&good[..cut], "store_id", &encoder())
                .unwrap_err();
            assert_eq!(err.kind, RecordErrorKind::InvalidAvro, "cut at {cut}");
        }
        let mut long = good.clone();
        long.push(0);
        assert_eq!(
            plan.decode(&long, "store_id", &encoder()).unwrap_err().kind,
            RecordErrorKind::InvalidAvro
        );
    }

    #[test]
    fn a_reader_field_without_default_missing_from_the_writer_is_incompatible() {
        let writer =
            r#"{"type":"record","name":"E","fields":[{"name":"store_id","type":"string"}]}"#;
        let reader = ReaderSchema::parse(READER).unwrap();
        let err = Plan::new(&Schema::parse_str(writer).unwrap(), &reader).unwrap_err();
        assert!(err.contains("price"), "{err}");
        let writer = r#"{"type":"record","name":"E","fields":[{"name":"store_id","type":"string"},
            {"name":"price","type":"string"},{"name":"ts","type":"long"}]}"#;
        let err = Plan::new(&Schema::parse_str(writer).unwrap(), &reader).unwrap_err();
        assert!(err.contains("does not promote"), "{err}");
    }
}
