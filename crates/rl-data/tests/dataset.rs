//! The JSONL and Parquet dataset loaders on the fixtures of
//! `scripts/reference/reward_parquet_fixture.py` (pyarrow-written, as Hugging Face ships them).

use std::path::{Path, PathBuf};

use rl_core::Prompt;
use rl_data::{
    DatasetError, DatasetErrorKind, DatasetFields, Record, load_dataset, load_jsonl, load_parquet,
};
use serde_json::json;

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn math_fields() -> DatasetFields {
    DatasetFields { prompt: "problem".into(), answer: "answer".into(), metadata: vec![] }
}

fn kind(r: std::result::Result<Vec<Prompt>, DatasetError>) -> DatasetErrorKind {
    r.expect_err("an error").kind
}

/// The four rows of the math fixtures, as the loaders must return them.
fn expected_math() -> Vec<Prompt> {
    let rows = [
        ("What is $1 + 1$?", "2", 1, "arithmetic", json!(["easy"])),
        ("Compute $\\frac{84}{2}$.", "42", 2, "algebra", json!([])),
        ("Let $x - 10 = -17$. Find $x$.", "-7", 3, "algebra", json!(["negative", "linear"])),
        ("Combien font 6 × 7 ? Réponds en français.", "42", 1, "arithmétique", json!(["unicode"])),
    ];
    rows.into_iter()
        .map(|(text, answer, level, subject, tags)| Prompt {
            text: text.into(),
            answer: Some(answer.into()),
            metadata: [
                ("level".to_string(), json!(level)),
                ("subject".to_string(), json!(subject)),
                ("tags".to_string(), tags),
            ]
            .into_iter()
            .collect(),
        })
        .collect()
}

#[test]
fn parquet_loads_exact_values() -> Result {
    // Snappy, two row groups: every row, in order, integer answers as text.
    assert_eq!(load_parquet(&fixture("dataset_math.parquet"), &math_fields())?, expected_math());
    Ok(())
}

#[test]
fn zstd_and_gzip_load_the_same_rows() -> Result {
    for name in ["dataset_math_zstd.parquet", "dataset_math_gzip.parquet"] {
        assert_eq!(load_parquet(&fixture(name), &math_fields())?, expected_math(), "{name}");
    }
    Ok(())
}

#[test]
fn jsonl_and_parquet_load_identically() -> Result {
    let jsonl = load_jsonl(&fixture("dataset_math.jsonl"), &math_fields())?;
    let parquet = load_parquet(&fixture("dataset_math.parquet"), &math_fields())?;
    assert_eq!(jsonl, parquet);
    assert_eq!(jsonl, expected_math());
    let listed =
        DatasetFields { metadata: vec!["subject".into(), "answer".into()], ..math_fields() };
    let jsonl = load_jsonl(&fixture("dataset_math.jsonl"), &listed)?;
    assert_eq!(jsonl, load_parquet(&fixture("dataset_math.parquet"), &listed)?);
    assert_eq!(
        jsonl[2].metadata,
        [("answer".into(), json!(-7)), ("subject".into(), json!("algebra"))].into()
    );
    Ok(())
}

#[test]
fn load_dataset_dispatches_on_the_extension() -> Result {
    let dir = tempfile::tempdir()?;
    let upper = dir.path().join("MATH.PARQUET");
    std::fs::copy(fixture("dataset_math.parquet"), &upper)?;
    let json = dir.path().join("math.json");
    std::fs::copy(fixture("dataset_math.jsonl"), &json)?;
    for path in [fixture("dataset_math.parquet"), fixture("dataset_math.jsonl"), upper, json] {
        assert_eq!(load_dataset(&path, &math_fields())?, expected_math(), "{}", path.display());
    }
    for (name, ext) in [("math.csv", Some("csv")), ("math", None), ("math.jsonl.gz", Some("gz"))] {
        let DatasetErrorKind::UnknownFormat { extension } =
            kind(load_dataset(&dir.path().join(name), &math_fields()))
        else {
            panic!("{name}: expected UnknownFormat")
        };
        assert_eq!(extension.as_deref(), ext);
    }
    Ok(())
}

#[test]
fn listed_metadata_columns_are_projected() -> Result {
    let fields = DatasetFields { metadata: vec!["level".into()], ..math_fields() };
    let p = load_parquet(&fixture("dataset_math.parquet"), &fields)?;
    let levels: Vec<_> = p.iter().map(|p| p.metadata.clone()).collect();
    let want: Vec<rl_core::Metadata> =
        [1, 2, 3, 1].iter().map(|l| [("level".to_string(), json!(l))].into()).collect();
    assert_eq!(levels, want);
    assert_eq!(p[2].answer.as_deref(), Some("-7"));
    Ok(())
}

#[test]
fn missing_column_is_named_with_the_available_ones() {
    let path = fixture("dataset_math.parquet");
    for fields in [
        DatasetFields { prompt: "question".into(), ..math_fields() },
        DatasetFields { answer: "question".into(), ..math_fields() },
        DatasetFields { metadata: vec!["level".into(), "question".into()], ..math_fields() },
    ] {
        let err = load_parquet(&path, &fields).expect_err("missing column");
        assert_eq!(
            err.to_string(),
            format!(
                "{}: no column `question` (available: `problem`, `answer`, `level`, `subject`, `tags`)",
                path.display()
            )
        );
        let DatasetErrorKind::MissingColumn { column, available, record } = err.kind else {
            panic!("expected MissingColumn")
        };
        assert_eq!(column, "question");
        assert_eq!(available, ["problem", "answer", "level", "subject", "tags"]);
        assert_eq!(record, None);
    }
}

#[test]
fn null_answer_names_the_row_and_null_metadata_is_kept() -> Result {
    let path = fixture("dataset_null.parquet");
    let err = load_parquet(&path, &math_fields()).expect_err("null answer in row 2");
    assert_eq!(err.to_string(), format!("{}: row 2: column `answer` is null", path.display()));
    let DatasetErrorKind::Null { column, record } = err.kind else { panic!("expected Null") };
    assert_eq!((column.as_str(), record), ("answer", Record::Row(2)));
    // Row 0 has a null `level`: metadata keeps it as JSON null.
    let fields = DatasetFields { answer: "subject".into(), ..math_fields() };
    let p = load_parquet(&path, &fields)?;
    assert_eq!(p.len(), 4);
    assert_eq!(p[0].metadata["level"], json!(null));
    assert_eq!(p[2].metadata["answer"], json!(null));
    assert_eq!(p[1].answer.as_deref(), Some("algebra"));
    Ok(())
}

#[test]
fn column_types() -> Result {
    let path = fixture("dataset_types.parquet");
    let with = |answer: &str| DatasetFields {
        prompt: "question".into(),
        answer: answer.into(),
        metadata: vec!["blob".into(), "flag".into(), "day".into(), "info".into()],
    };
    let answers = |answer: &str| -> Result<Vec<String>> {
        Ok(load_parquet(&path, &with(answer))?
            .into_iter()
            .map(|p| p.answer.unwrap_or_default())
            .collect())
    };
    // Numbers print as serde_json prints the same JSON numbers.
    assert_eq!(answers("f64")?, ["2.0", "0.1"]);
    assert_eq!(answers("f32")?, ["2.0", "0.1"]);
    assert_eq!(answers("dec")?, ["1.50", "-2.25"]);
    assert_eq!(answers("u8")?, ["7", "255"]);
    assert_eq!(answers("f16")?, ["2.0", "0.5"]);
    // Strings: large_string, string_view, dictionary<string>.
    for column in ["question", "view", "cat"] {
        assert_eq!(answers(column)?, ["Half of 4?", "A tenth?"], "{column}");
        let as_prompt = DatasetFields { prompt: column.into(), ..with("u8") };
        let texts: Vec<_> = load_parquet(&path, &as_prompt)?.into_iter().map(|p| p.text).collect();
        assert_eq!(texts, ["Half of 4?", "A tenth?"], "{column}");
    }
    let p = load_parquet(&path, &with("u8"))?;
    assert_eq!(p[0].text, "Half of 4?");
    let want: rl_core::Metadata = [
        ("blob".to_string(), json!("AAE=")), // base64
        ("flag".to_string(), json!(true)),
        ("day".to_string(), json!("2024-01-31")),
        ("info".to_string(), json!({"id": 1, "src": "a"})),
    ]
    .into();
    assert_eq!(p[0].metadata, want);
    assert_eq!(p[1].metadata["info"], json!({"id": 2, "src": null}));
    for (answer, found) in [
        ("blob", "binary (not UTF-8 annotated)"),
        ("flag", "a boolean"),
        ("day", "a date"),
        ("info", "a struct"),
    ] {
        let DatasetErrorKind::WrongType { column, expected, found: got, record } =
            kind(load_parquet(&path, &with(answer)))
        else {
            panic!("{answer}: expected WrongType")
        };
        assert_eq!(
            (column.as_str(), expected, got, record),
            (answer, "a string or a number", found, Record::Row(0))
        );
    }
    // A number is not a prompt; neither is a list.
    let fields = DatasetFields { prompt: "f64".into(), ..with("u8") };
    let err = load_parquet(&path, &fields).expect_err("numeric prompt");
    assert!(
        err.to_string().ends_with("row 0: column `f64` is a number, expected a string"),
        "{err}"
    );
    let fields = DatasetFields { prompt: "tags".into(), ..math_fields() };
    let err = kind(load_parquet(&fixture("dataset_math.parquet"), &fields));
    assert!(matches!(err, DatasetErrorKind::WrongType { found: "a list", .. }), "{err:?}");
    Ok(())
}

#[test]
fn unsupported_codec_is_typed() {
    let DatasetErrorKind::UnsupportedCodec { column, codec } =
        kind(load_parquet(&fixture("dataset_brotli.parquet"), &math_fields()))
    else {
        panic!("expected UnsupportedCodec")
    };
    assert_eq!((column.as_str(), codec.as_str()), ("problem", "BROTLI"));
}

#[test]
fn missing_file_and_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope.parquet");
    for r in [
        load_parquet(&missing, &math_fields()),
        load_jsonl(&missing, &math_fields()),
        load_dataset(&missing, &math_fields()),
    ] {
        let err = r.expect_err("missing file");
        assert_eq!(err.path, missing);
        assert!(
            matches!(&err.kind, DatasetErrorKind::Open(e) if e.kind() == std::io::ErrorKind::NotFound),
            "{err}"
        );
    }
    let err = kind(load_parquet(dir.path(), &math_fields()));
    assert!(
        matches!(&err, DatasetErrorKind::Open(e) if e.kind() == std::io::ErrorKind::IsADirectory),
        "{err}"
    );
}

#[test]
fn corrupt_and_non_parquet_files() -> Result {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("bad.parquet");
    let good = std::fs::read(fixture("dataset_math.parquet"))?;
    let cases: [(&str, Vec<u8>); 4] = [
        ("empty", vec![]),
        ("jsonl", std::fs::read(fixture("dataset_math.jsonl"))?),
        ("truncated", good[..good.len() / 2].to_vec()),
        ("no footer magic", [&good[..good.len() - 4], b"XXXX"].concat()),
    ];
    for (what, bytes) in cases {
        std::fs::write(&path, bytes)?;
        let err = kind(load_parquet(&path, &math_fields()));
        assert!(matches!(err, DatasetErrorKind::Corrupt { record: None, .. }), "{what}: {err:?}");
    }
    // A Parquet file is not JSON lines.
    let err = kind(load_jsonl(&fixture("dataset_math.parquet"), &math_fields()));
    assert!(
        matches!(err, DatasetErrorKind::Corrupt { record: Some(Record::Line(1)), .. }),
        "{err:?}"
    );
    Ok(())
}

/// No input panics or aborts: every truncation and two byte flips at every offset of a fixture
/// load to `Ok` or a typed error. The decoder itself does panic on some of them (assertions in
/// its bit reader and metadata code): those panics are caught and reported as `Corrupt`.
#[test]
fn damaged_files_never_panic() -> Result {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("damaged.parquet");
    let good = std::fs::read(fixture("dataset_math.parquet"))?;
    let fields = math_fields();
    let (mut errors, mut caught) = (0, 0);
    for i in 0..good.len() {
        let flip = |mask: u8| {
            let mut b = good.clone();
            b[i] ^= mask;
            b
        };
        for bytes in [good[..i].to_vec(), flip(0x10), flip(0x5a)] {
            std::fs::write(&path, bytes)?;
            match load_parquet(&path, &fields) {
                Ok(p) => assert!(p.len() <= 4, "{i}: {} rows", p.len()),
                Err(e) => {
                    assert_eq!(e.path, path);
                    errors += 1;
                    caught += usize::from(e.to_string().contains("the Parquet decoder panicked"));
                }
            }
        }
    }
    assert!(errors > good.len(), "most damaged files must fail: {errors}");
    assert!(caught > 0, "the sweep no longer reaches a decoder panic");
    // One of them, pinned: a flipped bit in the first page header.
    let mut b = good.clone();
    b[12] ^= 0x10;
    std::fs::write(&path, b)?;
    let err = kind(load_parquet(&path, &fields));
    let DatasetErrorKind::Corrupt { record: Some(Record::Row(0)), reason } = &err else {
        panic!("{err:?}")
    };
    assert!(reason.starts_with("the Parquet decoder panicked: "), "{reason}");
    Ok(())
}
