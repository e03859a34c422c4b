//! Avro compatibility by the specification's schema-resolution rules, with one readable reason
//! per broken rule (`OrderPlaced.lines[].sku: ...`).
//!
//! "Can `reader` read data written with `writer`?" is the one primitive; the registry's levels
//! are built from it: BACKWARD = the new schema reads the previous one's data, FORWARD = the
//! previous schema reads the new one's data, FULL = both; `_TRANSITIVE` checks every earlier
//! version instead of only the latest.
//!
//! Rules (Avro 1.11 "Schema Resolution"): same primitive type; promotions int→long→float→double
//! and string↔bytes; records match by unqualified name or a reader alias, a reader field missing
//! from the writer needs a default, reader field aliases match writer field names, fields only the
//! writer has are skipped; enums need every writer symbol unless the reader has a default symbol;
//! fixed sizes match; arrays and maps by their item/value types; a writer union needs every branch
//! readable, a reader union needs one branch that reads the writer. Logical types are compared by
//! their underlying type, as Java's `SchemaCompatibility` does.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    str::FromStr,
};

use apache_avro::{
    Schema,
    schema::{InnerDecimalSchema, Name, UuidSchema},
};

/// The registry's compatibility levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompatibilityLevel {
    None,
    Backward,
    BackwardTransitive,
    Forward,
    ForwardTransitive,
    Full,
    FullTransitive,
}

impl CompatibilityLevel {
    pub const ALL: [CompatibilityLevel; 7] = [
        Self::None,
        Self::Backward,
        Self::BackwardTransitive,
        Self::Forward,
        Self::ForwardTransitive,
        Self::Full,
        Self::FullTransitive,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "NONE",
            Self::Backward => "BACKWARD",
            Self::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Self::Forward => "FORWARD",
            Self::ForwardTransitive => "FORWARD_TRANSITIVE",
            Self::Full => "FULL",
            Self::FullTransitive => "FULL_TRANSITIVE",
        }
    }

    fn transitive(self) -> bool {
        matches!(self, Self::BackwardTransitive | Self::ForwardTransitive | Self::FullTransitive)
    }

    fn backward(self) -> bool {
        matches!(self, Self::Backward | Self::BackwardTransitive | Self::Full | Self::FullTransitive)
    }

    fn forward(self) -> bool {
        matches!(self, Self::Forward | Self::ForwardTransitive | Self::Full | Self::FullTransitive)
    }

    /// Checks `new` against `previous` (oldest first) at this level. Each problem names the
    /// earlier version by its index in `previous` plus one.
    pub fn check(self, new: &Schema, previous: &[&Schema]) -> Vec<VersionedIncompatibility> {
        let against: Vec<(usize, &Schema)> = if self.transitive() {
            previous.iter().copied().enumerate().collect()
        } else {
            previous.iter().copied().enumerate().next_back().into_iter().collect()
        };
        let mut out = Vec::new();
        for (index, old) in against {
            if self.backward() {
                for problem in can_read(new, old) {
                    out.push(VersionedIncompatibility {
                        position: index + 1,
                        direction: Direction::NewReadsOld,
                        problem,
                    });
                }
            }
            if self.forward() {
                for problem in can_read(old, new) {
                    out.push(VersionedIncompatibility {
                        position: index + 1,
                        direction: Direction::OldReadsNew,
                        problem,
                    });
                }
            }
        }
        out
    }
}

impl fmt::Display for CompatibilityLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CompatibilityLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|level| level.as_str().eq_ignore_ascii_case(s)).ok_or_else(|| {
            let names: Vec<_> = Self::ALL.iter().map(|l| l.as_str()).collect();
            format!("unknown compatibility level {s:?}; expected one of {}", names.join(", "))
        })
    }
}

/// Which way the data would flow for a problem found by a level check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// A consumer on the new schema cannot read data written with the old one (BACKWARD).
    NewReadsOld,
    /// A consumer still on the old schema cannot read data written with the new one (FORWARD).
    OldReadsNew,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionedIncompatibility {
    /// 1-based position in the list of earlier schemas the check was given.
    pub position: usize,
    pub direction: Direction,
    pub problem: Incompatibility,
}

/// The rule an incompatibility breaks; names follow Confluent's verbose messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    ReaderFieldMissingDefaultValue,
    TypeMismatch,
    NameMismatch,
    FixedSizeMismatch,
    MissingEnumSymbols,
    MissingUnionBranch,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::ReaderFieldMissingDefaultValue => "READER_FIELD_MISSING_DEFAULT_VALUE",
            Rule::TypeMismatch => "TYPE_MISMATCH",
            Rule::NameMismatch => "NAME_MISMATCH",
            Rule::FixedSizeMismatch => "FIXED_SIZE_MISMATCH",
            Rule::MissingEnumSymbols => "MISSING_ENUM_SYMBOLS",
            Rule::MissingUnionBranch => "MISSING_UNION_BRANCH",
        }
    }
}

/// One broken rule at one place in the reader's schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incompatibility {
    pub rule: Rule,
    /// Where, e.g. `OrderPlaced.lines[].sku`.
    pub path: String,
    pub detail: String,
}

impl fmt::Display for Incompatibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} ({})", self.path, self.detail, self.rule.as_str())
    }
}

/// Every rule broken when `reader` reads data written with `writer`; empty means compatible.
pub fn can_read(reader: &Schema, writer: &Schema) -> Vec<Incompatibility> {
    let mut checker = Checker {
        reader_names: names_of(reader),
        writer_names: names_of(writer),
        in_progress: HashSet::new(),
        out: Vec::new(),
    };
    let root = reader.name().map(|n| n.name().to_string()).unwrap_or_else(|| "<root>".into());
    checker.check(reader, writer, &root);
    checker.out
}

struct Checker<'a> {
    reader_names: HashMap<String, &'a Schema>,
    writer_names: HashMap<String, &'a Schema>,
    /// Named pairs being checked, so recursive types terminate (assumed compatible on re-entry).
    in_progress: HashSet<(String, String)>,
    out: Vec<Incompatibility>,
}

impl<'a> Checker<'a> {
    fn problem(&mut self, rule: Rule, path: &str, detail: String) {
        self.out.push(Incompatibility { rule, path: path.to_string(), detail });
    }

    /// Runs a check on the side and reports whether it found nothing.
    fn quietly_compatible(&mut self, reader: &'a Schema, writer: &'a Schema, path: &str) -> bool {
        let saved = std::mem::take(&mut self.out);
        self.check(reader, writer, path);
        let ok = self.out.is_empty();
        self.out = saved;
        ok
    }

    fn check(&mut self, reader: &'a Schema, writer: &'a Schema, path: &str) {
        let reader = underlying(deref(reader, &self.reader_names));
        let writer = underlying(deref(writer, &self.writer_names));
        match (reader, writer) {
            (_, Schema::Union(w)) => {
                for (i, branch) in w.variants().iter().enumerate() {
                    let ok = match reader {
                        Schema::Union(r) => r.variants().iter().any(|rb| self.quietly_compatible(rb, branch, path)),
                        _ => self.quietly_compatible(reader, branch, path),
                    };
                    if !ok {
                        let detail = format!(
                            "the writer's union branch {i} ({}) has no matching type in the reader ({})",
                            describe(branch),
                            describe(reader)
                        );
                        self.problem(Rule::MissingUnionBranch, path, detail);
                    }
                }
            }
            (Schema::Union(r), _) => {
                if !r.variants().iter().any(|rb| self.quietly_compatible(rb, writer, path)) {
                    let detail = format!(
                        "no branch of the reader's union ({}) can read the writer's {}",
                        describe(reader),
                        describe(writer)
                    );
                    self.problem(Rule::MissingUnionBranch, path, detail);
                }
            }
            (Schema::Record(r), Schema::Record(w)) => {
                if !self.names_match(&r.name, r.aliases.as_deref(), &w.name, path) {
                    return;
                }
                let key = (r.name.to_string(), w.name.to_string());
                if !self.in_progress.insert(key.clone()) {
                    return;
                }
                for field in &r.fields {
                    let field_path = format!("{path}.{}", field.name);
                    let found = w
                        .fields
                        .iter()
                        .find(|wf| wf.name == field.name)
                        .or_else(|| w.fields.iter().find(|wf| field.aliases.contains(&wf.name)));
                    match found {
                        Some(wf) => self.check(&field.schema, &wf.schema, &field_path),
                        None if field.default.is_some() => {}
                        None => self.problem(
                            Rule::ReaderFieldMissingDefaultValue,
                            &field_path,
                            format!(
                                "field {:?} is read but the writer's {} has no such field and the reader gives no default",
                                field.name,
                                w.name.name()
                            ),
                        ),
                    }
                }
                self.in_progress.remove(&key);
            }
            (Schema::Enum(r), Schema::Enum(w)) => {
                if !self.names_match(&r.name, r.aliases.as_deref(), &w.name, path) {
                    return;
                }
                let missing: Vec<&str> =
                    w.symbols.iter().filter(|s| !r.symbols.contains(s)).map(String::as_str).collect();
                if !missing.is_empty() && r.default.is_none() {
                    let detail = format!(
                        "the writer's enum {} has symbols {:?} the reader lacks, and the reader has no default symbol",
                        w.name.name(),
                        missing
                    );
                    self.problem(Rule::MissingEnumSymbols, path, detail);
                }
            }
            (Schema::Fixed(r), Schema::Fixed(w)) => {
                if self.names_match(&r.name, r.aliases.as_deref(), &w.name, path) && r.size != w.size {
                    let detail = format!(
                        "fixed {} is {} bytes for the reader, {} for the writer",
                        r.name.name(),
                        r.size,
                        w.size
                    );
                    self.problem(Rule::FixedSizeMismatch, path, detail);
                }
            }
            (Schema::Array(r), Schema::Array(w)) => self.check(&r.items, &w.items, &format!("{path}[]")),
            (Schema::Map(r), Schema::Map(w)) => self.check(&r.types, &w.types, &format!("{path}{{}}")),
            (r, w) if primitive_reads(r, w) => {}
            (r, w) => {
                let detail = format!("the reader expects {}, the writer wrote {}", describe(r), describe(w));
                self.problem(Rule::TypeMismatch, path, detail);
            }
        }
    }

    fn names_match(
        &mut self,
        reader: &Name,
        aliases: Option<&[apache_avro::schema::Alias]>,
        writer: &Name,
        path: &str,
    ) -> bool {
        let alias_hit = aliases
            .unwrap_or_default()
            .iter()
            .any(|a| a.name() == writer.name() || a.fullname(reader.namespace()) == writer.to_string());
        if reader.name() == writer.name() || alias_hit {
            return true;
        }
        let detail = format!(
            "the reader's type is named {:?}, the writer's {:?} (rename with an alias to keep them compatible)",
            reader.name(),
            writer.name()
        );
        self.problem(Rule::NameMismatch, path, detail);
        false
    }
}

/// Primitive reads allowed by the spec: same type, or a promotion.
fn primitive_reads(reader: &Schema, writer: &Schema) -> bool {
    use Schema::*;
    matches!(
        (reader, writer),
        (Null, Null)
            | (Boolean, Boolean)
            | (Int, Int)
            | (Long, Int | Long)
            | (Float, Int | Long | Float)
            | (Double, Int | Long | Float | Double)
            | (Bytes, Bytes | String)
            | (String, String | Bytes)
    )
}

/// Logical types are read as their underlying type.
fn underlying(schema: &Schema) -> &Schema {
    match schema {
        Schema::Uuid(UuidSchema::String) => &Schema::String,
        Schema::Uuid(UuidSchema::Bytes) | Schema::BigDecimal => &Schema::Bytes,
        Schema::Uuid(UuidSchema::Fixed(_)) | Schema::Duration(_) => schema,
        Schema::Decimal(d) => match &d.inner {
            InnerDecimalSchema::Bytes => &Schema::Bytes,
            InnerDecimalSchema::Fixed(_) => schema,
        },
        Schema::Date | Schema::TimeMillis => &Schema::Int,
        Schema::TimeMicros
        | Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::TimestampNanos
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos => &Schema::Long,
        other => other,
    }
}

fn deref<'a>(schema: &'a Schema, names: &HashMap<String, &'a Schema>) -> &'a Schema {
    match schema {
        Schema::Ref { name } => names.get(&name.to_string()).copied().unwrap_or(schema),
        other => other,
    }
}

fn describe(schema: &Schema) -> String {
    match underlying(schema) {
        Schema::Record(r) => format!("record {}", r.name.name()),
        Schema::Enum(e) => format!("enum {}", e.name.name()),
        Schema::Fixed(f) => format!("fixed {}", f.name.name()),
        Schema::Uuid(UuidSchema::Fixed(f)) | Schema::Duration(f) => format!("fixed {}", f.name.name()),
        Schema::Decimal(_) => "fixed decimal".into(),
        Schema::Array(a) => format!("array of {}", describe(&a.items)),
        Schema::Map(m) => format!("map of {}", describe(&m.types)),
        Schema::Union(u) => format!("union [{}]", u.variants().iter().map(describe).collect::<Vec<_>>().join(", ")),
        Schema::Ref { name } => name.name().to_string(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Every named type defined in a schema, by full name.
fn names_of(schema: &Schema) -> HashMap<String, &Schema> {
    fn walk<'a>(schema: &'a Schema, out: &mut HashMap<String, &'a Schema>) {
        match schema {
            Schema::Record(r) => {
                out.insert(r.name.to_string(), schema);
                for f in &r.fields {
                    walk(&f.schema, out);
                }
            }
            Schema::Enum(e) => {
                out.insert(e.name.to_string(), schema);
            }
            Schema::Fixed(f) | Schema::Duration(f) | Schema::Uuid(UuidSchema::Fixed(f)) => {
                out.insert(f.name.to_string(), schema);
            }
            Schema::Decimal(d) => {
                if let InnerDecimalSchema::Fixed(f) = &d.inner {
                    out.insert(f.name.to_string(), schema);
                }
            }
            Schema::Array(a) => walk(&a.items, out),
            Schema::Map(m) => walk(&m.types, out),
            Schema::Union(u) => u.variants().iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = HashMap::new();
    walk(schema, &mut out);
    out
}
