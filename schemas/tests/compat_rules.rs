//! One test per Avro schema-resolution rule, each with a compatible and an incompatible case,
//! cross-checked against apache-avro's own checker where the two are meant to agree.

use apache_avro::{Schema, schema_compatibility::SchemaCompatibility};
use orderflow_schemas::compat::{Rule, can_read};

fn schema(json: &str) -> Schema {
    Schema::parse_str(json).unwrap_or_else(|e| panic!("{json}: {e}"))
}

fn record(fields: &str) -> Schema {
    schema(&format!(r#"{{"type":"record","name":"R","namespace":"t","fields":[{fields}]}}"#))
}

/// Our verdict, asserting apache-avro agrees.
fn readable(reader: &Schema, writer: &Schema) -> bool {
    let ours = can_read(reader, writer).is_empty();
    let theirs = SchemaCompatibility::can_read(writer, reader).is_ok();
    assert_eq!(ours, theirs, "apache-avro disagrees: ours={ours} theirs={theirs} reader={reader:?} writer={writer:?}");
    ours
}

/// A case where apache-avro 0.22's checker accepts data the spec says the reader cannot read;
/// our layer refuses it. If apache-avro fixes the gap this assertion tells us.
fn apache_avro_gap(reader: &Schema, writer: &Schema) {
    assert!(!can_read(reader, writer).is_empty(), "we must refuse reader={reader:?} writer={writer:?}");
    assert!(
        SchemaCompatibility::can_read(writer, reader).is_ok(),
        "apache-avro now refuses this too; turn this case into a `readable` assertion"
    );
}

fn rules(reader: &Schema, writer: &Schema) -> Vec<Rule> {
    can_read(reader, writer).into_iter().map(|i| i.rule).collect()
}

#[test]
fn an_added_field_needs_a_default() {
    let old = record(r#"{"name":"a","type":"string"}"#);
    let with_default = record(r#"{"name":"a","type":"string"},{"name":"b","type":["null","string"],"default":null}"#);
    let without = record(r#"{"name":"a","type":"string"},{"name":"b","type":"string"}"#);
    assert!(readable(&with_default, &old));
    assert!(!readable(&without, &old));
    let found = can_read(&without, &old);
    assert_eq!(found[0].rule, Rule::ReaderFieldMissingDefaultValue);
    assert_eq!(found[0].path, "R.b");
}

#[test]
fn a_removed_field_is_skipped_by_the_reader() {
    let old = record(r#"{"name":"a","type":"string"},{"name":"b","type":"int"}"#);
    let new = record(r#"{"name":"a","type":"string"}"#);
    assert!(readable(&new, &old), "the new reader skips b");
    assert!(!readable(&old, &new), "an old reader needs b, which has no default");
}

#[test]
fn numbers_promote_int_long_float_double_and_never_back() {
    let types = ["int", "long", "float", "double"];
    for (wi, w) in types.iter().enumerate() {
        for (ri, r) in types.iter().enumerate() {
            let ok = readable(&schema(&format!(r#""{r}""#)), &schema(&format!(r#""{w}""#)));
            assert_eq!(ok, ri >= wi, "reader {r} on writer {w}");
        }
    }
    assert_eq!(rules(&schema(r#""int""#), &schema(r#""long""#)), vec![Rule::TypeMismatch]);
}

#[test]
fn string_and_bytes_read_each_other() {
    assert!(readable(&schema(r#""bytes""#), &schema(r#""string""#)));
    assert!(readable(&schema(r#""string""#), &schema(r#""bytes""#)));
    assert!(!readable(&schema(r#""string""#), &schema(r#""int""#)));
}

#[test]
fn an_enum_reader_needs_every_writer_symbol_unless_it_has_a_default() {
    let writer = schema(r#"{"type":"enum","name":"E","symbols":["A","B","C"]}"#);
    let fewer = schema(r#"{"type":"enum","name":"E","symbols":["A","B"]}"#);
    let fewer_with_default = schema(r#"{"type":"enum","name":"E","symbols":["A","B"],"default":"A"}"#);
    apache_avro_gap(&fewer, &writer);
    assert_eq!(rules(&fewer, &writer), vec![Rule::MissingEnumSymbols]);
    assert!(can_read(&fewer, &writer)[0].detail.contains("\"C\""));
    assert!(readable(&writer, &fewer), "adding symbols is backward compatible");
    assert!(can_read(&fewer_with_default, &writer).is_empty(), "unknown symbols read as the default");
}

#[test]
fn a_writer_union_needs_every_branch_readable() {
    let writer = schema(r#"["null","string","int"]"#);
    assert!(readable(&schema(r#"["null","string","long"]"#), &writer), "int promotes to long");
    apache_avro_gap(&schema(r#"["null","string"]"#), &writer);
    assert_eq!(rules(&schema(r#"["null","string"]"#), &writer), vec![Rule::MissingUnionBranch]);
}

#[test]
fn a_reader_union_needs_one_branch_that_reads_the_writer() {
    assert!(readable(&schema(r#"["null","long"]"#), &schema(r#""int""#)));
    assert!(!readable(&schema(r#"["null","string"]"#), &schema(r#""int""#)));
    // Making a field optional keeps old data readable; making it required again does not.
    let required = record(r#"{"name":"a","type":"string"}"#);
    let optional = record(r#"{"name":"a","type":["null","string"],"default":null}"#);
    assert!(readable(&optional, &required));
    apache_avro_gap(&required, &optional);
}

#[test]
fn nested_records_are_checked_field_by_field_with_a_path() {
    let old = record(
        r#"{"name":"lines","type":{"type":"array","items":{"type":"record","name":"Line","fields":[{"name":"sku","type":"string"}]}}}"#,
    );
    let broken = record(
        r#"{"name":"lines","type":{"type":"array","items":{"type":"record","name":"Line","fields":[{"name":"sku","type":"int"}]}}}"#,
    );
    assert!(!readable(&broken, &old));
    let found = can_read(&broken, &old);
    assert_eq!(found[0].path, "R.lines[].sku");
    assert_eq!(found[0].rule, Rule::TypeMismatch);
}

#[test]
fn maps_are_checked_by_their_values() {
    assert!(readable(&schema(r#"{"type":"map","values":"long"}"#), &schema(r#"{"type":"map","values":"int"}"#)));
    assert!(!readable(&schema(r#"{"type":"map","values":"int"}"#), &schema(r#"{"type":"map","values":"string"}"#)));
}

#[test]
fn a_renamed_field_is_compatible_only_through_an_alias() {
    let old = record(r#"{"name":"customer","type":"string"}"#);
    let renamed = record(r#"{"name":"customer_id","type":"string"}"#);
    let aliased = record(r#"{"name":"customer_id","type":"string","aliases":["customer"]}"#);
    assert_eq!(rules(&renamed, &old), vec![Rule::ReaderFieldMissingDefaultValue]);
    assert!(can_read(&aliased, &old).is_empty());
}

#[test]
fn a_renamed_record_is_compatible_only_through_an_alias() {
    let old = schema(r#"{"type":"record","name":"Old","namespace":"t","fields":[]}"#);
    let renamed = schema(r#"{"type":"record","name":"New","namespace":"t","fields":[]}"#);
    let aliased = schema(r#"{"type":"record","name":"New","namespace":"t","aliases":["Old"],"fields":[]}"#);
    assert_eq!(rules(&renamed, &old), vec![Rule::NameMismatch]);
    assert!(can_read(&aliased, &old).is_empty());
}

#[test]
fn fixed_sizes_must_match() {
    let four = schema(r#"{"type":"fixed","name":"F","size":4}"#);
    let eight = schema(r#"{"type":"fixed","name":"F","size":8}"#);
    assert!(readable(&four, &four));
    assert!(!readable(&four, &eight));
    assert_eq!(rules(&four, &eight), vec![Rule::FixedSizeMismatch]);
}

#[test]
fn logical_types_compare_by_their_underlying_type() {
    let uuid = schema(r#"{"type":"string","logicalType":"uuid"}"#);
    let ts = schema(r#"{"type":"long","logicalType":"timestamp-millis"}"#);
    assert!(can_read(&schema(r#""string""#), &uuid).is_empty());
    assert!(can_read(&ts, &schema(r#""long""#)).is_empty());
    assert!(can_read(&schema(r#""double""#), &ts).is_empty(), "long promotes to double");
    assert_eq!(rules(&uuid, &ts), vec![Rule::TypeMismatch]);
}

#[test]
fn recursive_types_terminate() {
    let list = schema(
        r#"{"type":"record","name":"Node","fields":[{"name":"v","type":"int"},{"name":"next","type":["null","Node"],"default":null}]}"#,
    );
    let wider = schema(
        r#"{"type":"record","name":"Node","fields":[{"name":"v","type":"long"},{"name":"next","type":["null","Node"],"default":null}]}"#,
    );
    assert!(can_read(&wider, &list).is_empty());
    assert!(!can_read(&list, &wider).is_empty());
}

#[test]
fn every_problem_is_reported_not_just_the_first() {
    let old = record(r#"{"name":"a","type":"string"},{"name":"b","type":"string"}"#);
    let new = record(r#"{"name":"a","type":"int"},{"name":"b","type":"int"},{"name":"c","type":"int"}"#);
    assert_eq!(can_read(&new, &old).len(), 3);
}
