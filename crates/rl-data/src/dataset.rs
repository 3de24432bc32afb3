//! Dataset files → [`Prompt`]s: JSON lines and Parquet, with configurable field names.
//!
//! Both loaders turn each record (a JSONL line, a Parquet row) into the list of its fields and
//! hand it to one field mapping ([`DatasetFields`]), so they accept the same types, convert
//! numbers the same way and report the same errors ([`DatasetError`]).

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use parquet::basic::Compression;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use parquet::schema::types::Type;
use rl_core::Prompt;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Which fields of a dataset (JSONL keys, Parquet top-level columns) hold the prompt, the answer
/// and the metadata. The same configuration serves [`load_jsonl`], [`load_parquet`] and
/// [`load_dataset`].
///
/// | field | JSONL value | Parquet column |
/// |---|---|---|
/// | `prompt` | string | string (`string`, `large_string`, `string_view`, dictionary-encoded strings: `BYTE_ARRAY` annotated UTF8, ENUM or JSON) |
/// | `answer` | string or number | string, integer (8–64 bit, signed or unsigned), float (16/32/64 bit, finite), decimal |
/// | `metadata` | any | any, as JSON: numbers, strings, booleans; lists → arrays; structs and maps → objects; binary → base64 string; dates and timestamps → strings; null → `null` |
///
/// Numbers become answer text the way `serde_json` prints them, so JSONL and Parquet agree:
/// integers as digits (`42`, `-7`), floats in shortest round-trip form with a fractional part
/// (`2.0`, `0.1`), decimals with their scale (`1.50`). A null prompt or answer is an error
/// ([`DatasetErrorKind::Null`]); a null metadata value is kept as `null`.
///
/// ```
/// use rl_data::DatasetFields;
///
/// // A MATH-style dataset (`problem`, `answer`, ...) whose metadata keeps only `level`.
/// let fields: DatasetFields =
///     serde_json::from_str(r#"{"prompt": "problem", "metadata": ["level"]}"#)?;
/// assert_eq!(fields.answer, "answer"); // the default
/// assert_eq!(fields, DatasetFields { prompt: "problem".into(), answer: "answer".into(), metadata: vec!["level".into()] });
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatasetFields {
    /// The prompt field (must hold strings). Default `"prompt"`.
    pub prompt: String,
    /// The answer field (strings and numbers are accepted). Default `"answer"`.
    pub answer: String,
    /// Fields copied into [`Prompt::metadata`] (all fields but `prompt` and `answer` when
    /// empty). A listed field may be absent on some JSONL lines (it is then left out); a Parquet
    /// file has one schema, so a listed column it lacks is an error
    /// ([`DatasetErrorKind::MissingColumn`]) and only the listed columns are decoded.
    pub metadata: Vec<String>,
}

impl Default for DatasetFields {
    fn default() -> Self {
        Self { prompt: "prompt".into(), answer: "answer".into(), metadata: Vec::new() }
    }
}

/// The former name of [`DatasetFields`], from when only JSONL was read.
pub type JsonlFields = DatasetFields;

/// Where in a dataset file a record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Record {
    /// A JSONL line, 1-based as an editor shows it (blank lines count).
    Line(usize),
    /// A Parquet row, 0-based over the whole file as `datasets` and pandas index it (`ds[row]`).
    Row(usize),
}

impl std::fmt::Display for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Line(n) => write!(f, "line {n}"),
            Self::Row(n) => write!(f, "row {n}"),
        }
    }
}

/// A dataset file could not be loaded: the file and what is wrong with it.
///
/// Converts into [`rl_core::Error::File`] (with the same path and the kind's message), so `?`
/// works in functions returning [`rl_core::Result`].
#[derive(Debug, thiserror::Error)]
#[error("{}: {kind}", path.display())]
pub struct DatasetError {
    /// The dataset file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub kind: DatasetErrorKind,
}

/// What is wrong with a dataset file (see [`DatasetError`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DatasetErrorKind {
    /// The file cannot be opened: missing ([`std::io::ErrorKind::NotFound`]), a directory
    /// ([`std::io::ErrorKind::IsADirectory`]), not readable.
    #[error("cannot open: {0}")]
    Open(#[source] std::io::Error),
    /// [`load_dataset`] does not know the file's extension.
    #[error(
        "unknown dataset format {}: expected .jsonl, .json, .ndjson (JSON lines) or .parquet",
        .extension.as_deref().map_or("(no extension)".to_string(), |e| format!("`.{e}`"))
    )]
    UnknownFormat {
        /// The extension, lower-cased, if there is one.
        extension: Option<String>,
    },
    /// The file is not valid in its format: not Parquet at all, truncated, an undecodable page
    /// or string, a JSONL line that is not a JSON object, an I/O error while reading.
    #[error("{}{reason}", at(.record))]
    Corrupt {
        /// The record, when the problem is in one (`None`: the file's footer or metadata).
        record: Option<Record>,
        /// What the decoder said.
        reason: String,
    },
    /// A Parquet column is compressed with a codec this build cannot decompress (supported:
    /// uncompressed, snappy, gzip, zstd).
    #[error(
        "column `{column}` is compressed with {codec}, which is not supported \
         (supported: uncompressed, snappy, gzip, zstd)"
    )]
    UnsupportedCodec {
        /// The column (dotted path for nested columns).
        column: String,
        /// The codec, e.g. `BROTLI`.
        codec: String,
    },
    /// A configured field is not in the file (Parquet: not in the schema, `record` is `None`)
    /// or not on a line (JSONL).
    #[error("{}no column `{column}` (available: {})", at(.record), list(.available))]
    MissingColumn {
        /// The configured field name.
        column: String,
        /// The fields there are (Parquet: the schema's top-level columns, in order; JSONL: the
        /// line's keys).
        available: Vec<String>,
        /// The JSONL line, or `None` for a Parquet schema.
        record: Option<Record>,
    },
    /// A field holds a type that cannot be used where it is needed (a prompt that is not a
    /// string, an answer that is neither a string nor a number).
    #[error("{record}: column `{column}` is {found}, expected {expected}")]
    WrongType {
        /// The field name.
        column: String,
        /// What is accepted, e.g. `"a string or a number"`.
        expected: &'static str,
        /// What was found, e.g. `"a list"`, `"binary"`.
        found: &'static str,
        /// The record.
        record: Record,
    },
    /// A prompt or answer is null.
    #[error("{record}: column `{column}` is null")]
    Null {
        /// The field name.
        column: String,
        /// The record.
        record: Record,
    },
}

fn at(record: &Option<Record>) -> String {
    record.map(|r| format!("{r}: ")).unwrap_or_default()
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        return "none".into();
    }
    names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
}

impl From<DatasetError> for rl_core::Error {
    fn from(e: DatasetError) -> Self {
        Self::File { path: e.path, reason: e.kind.to_string() }
    }
}

/// Loads a dataset by its file extension (case-insensitive): `.jsonl`, `.json`, `.ndjson` with
/// [`load_jsonl`] (one JSON object per line, as Hugging Face's `json` loader also reads
/// `.json`), `.parquet` and `.pq` with [`load_parquet`].
///
/// # Errors
/// [`DatasetErrorKind::UnknownFormat`] for any other extension (a JSON array file, `.csv`,
/// `.jsonl.gz`, ...), else the loader's errors.
pub fn load_dataset(path: &Path, fields: &DatasetFields) -> Result<Vec<Prompt>, DatasetError> {
    let extension = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    match extension.as_deref() {
        Some("jsonl" | "json" | "ndjson") => load_jsonl(path, fields),
        Some("parquet" | "pq") => load_parquet(path, fields),
        _ => Err(DatasetError {
            path: path.to_path_buf(),
            kind: DatasetErrorKind::UnknownFormat { extension },
        }),
    }
}

/// Reads one JSON object per line into prompts (field types: see [`DatasetFields`]). Blank
/// lines are allowed; anything else that is wrong is an error naming the line (1-based):
/// nothing is skipped silently.
///
/// # Errors
/// [`DatasetErrorKind::Open`]; [`DatasetErrorKind::Corrupt`] for a malformed line, a line that
/// is not an object or is not UTF-8; [`DatasetErrorKind::MissingColumn`] for a line without the
/// prompt or answer field; [`DatasetErrorKind::WrongType`]; [`DatasetErrorKind::Null`].
pub fn load_jsonl(path: &Path, fields: &DatasetFields) -> Result<Vec<Prompt>, DatasetError> {
    read_jsonl(BufReader::new(open(path)?), path, fields)
}

/// [`load_jsonl`] on any reader (an HTTP body, a decompressor, bytes in memory); `path` only
/// names the source in errors.
///
/// ```
/// use std::path::Path;
/// use rl_data::{DatasetFields, read_jsonl};
///
/// let text = "{\"prompt\": \"1+1?\", \"answer\": \"2\"}\n\n{\"prompt\": \"2+2?\"}\n";
/// let fields = DatasetFields::default();
/// let err = read_jsonl(text.as_bytes(), Path::new("<memory>"), &fields).unwrap_err();
/// assert!(err.to_string().contains("line 3"), "{err}"); // the line without an answer
/// # Ok::<(), rl_data::DatasetError>(())
/// ```
///
/// # Errors
/// As [`load_jsonl`], without [`DatasetErrorKind::Open`].
pub fn read_jsonl(
    reader: impl BufRead,
    path: &Path,
    fields: &DatasetFields,
) -> Result<Vec<Prompt>, DatasetError> {
    let fail = |kind| DatasetError { path: path.to_path_buf(), kind };
    let mut out = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let record = Record::Line(i + 1);
        let corrupt =
            |reason: String| fail(DatasetErrorKind::Corrupt { record: Some(record), reason });
        let line = line.map_err(|e| corrupt(format!("cannot read: {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        let obj = match serde_json::from_str(&line) {
            Ok(Value::Object(obj)) => obj,
            Ok(_) => return Err(corrupt("expected a JSON object".into())),
            Err(e) => return Err(corrupt(format!("invalid JSON: {e}"))),
        };
        out.push(to_prompt(obj.into_iter().collect(), fields, record).map_err(fail)?);
    }
    Ok(out)
}

/// Reads a Parquet file (as Hugging Face datasets ship them) into prompts, one per row, with
/// the same field mapping as [`load_jsonl`] (column types: see [`DatasetFields`]). Codecs:
/// uncompressed, snappy (pyarrow's and so `datasets`' default), gzip and zstd (polars'
/// default). All row groups are read, in order.
///
/// Malformed input never panics: a panic inside the Parquet decoder (it has some on damaged
/// files) is caught and reported as [`DatasetErrorKind::Corrupt`], naming the row being read
/// (the decoder reads ahead, so the damage may be in a later row). This needs the default
/// `panic = "unwind"`; the panic hook still prints the decoder's message.
///
/// ```
/// use std::path::Path;
/// use rl_data::{DatasetFields, load_parquet};
///
/// let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/dataset_math.parquet"));
/// let fields = DatasetFields { prompt: "problem".into(), answer: "answer".into(), metadata: vec!["level".into()] };
/// let prompts = load_parquet(path, &fields)?;
/// assert_eq!(prompts[1].text, "Compute $\\frac{84}{2}$.");
/// assert_eq!(prompts[1].answer.as_deref(), Some("42")); // an int64 column
/// assert_eq!(prompts[1].metadata["level"], 2);
/// # Ok::<(), rl_data::DatasetError>(())
/// ```
///
/// # Errors
/// [`DatasetErrorKind::Open`]; [`DatasetErrorKind::Corrupt`] for a file that is not Parquet,
/// is truncated or does not decode (naming the row when it is in one);
/// [`DatasetErrorKind::UnsupportedCodec`]; [`DatasetErrorKind::MissingColumn`] for a configured
/// column (prompt, answer or a listed metadata column) that is not in the schema, listing those
/// that are; [`DatasetErrorKind::WrongType`]; [`DatasetErrorKind::Null`], naming the row.
pub fn load_parquet(path: &Path, fields: &DatasetFields) -> Result<Vec<Prompt>, DatasetError> {
    let file = open(path)?;
    let mut reading = None;
    catch_unwind(AssertUnwindSafe(|| read_parquet(file, fields, &mut reading)))
        .unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(corrupt(reading, format!("the Parquet decoder panicked: {what}")))
        })
        .map_err(|kind| DatasetError { path: path.to_path_buf(), kind })
}

/// The Parquet loader; `reading` is the row being decoded, for a decoder panic's report.
fn read_parquet(
    file: File,
    fields: &DatasetFields,
    reading: &mut Option<Record>,
) -> Result<Vec<Prompt>, DatasetErrorKind> {
    let reader = SerializedFileReader::new(file).map_err(|e| corrupt(None, e))?;
    let meta = reader.metadata();
    for column in meta.row_groups().iter().flat_map(|g| g.columns()) {
        match column.compression() {
            Compression::UNCOMPRESSED
            | Compression::SNAPPY
            | Compression::GZIP(_)
            | Compression::ZSTD(_) => {}
            other => {
                let codec = other.to_string();
                return Err(DatasetErrorKind::UnsupportedCodec {
                    column: column.column_path().string(),
                    codec: codec.split('(').next().unwrap_or(&codec).to_string(),
                });
            }
        }
    }
    let root = meta.file_metadata().schema_descr().root_schema();
    let columns = root.get_fields();
    let wanted = |name: &str| {
        name == fields.prompt || name == fields.answer || fields.metadata.iter().any(|m| m == name)
    };
    let configured = [&fields.prompt, &fields.answer].into_iter().chain(&fields.metadata);
    for name in configured {
        if !columns.iter().any(|c| c.name() == name) {
            return Err(DatasetErrorKind::MissingColumn {
                column: name.clone(),
                available: columns.iter().map(|c| c.name().to_string()).collect(),
                record: None,
            });
        }
    }
    // Decode only the columns the prompts need when the metadata columns are listed (datasets
    // may carry large columns such as images or full solutions).
    let projection = if fields.metadata.is_empty() {
        None
    } else {
        let kept = columns.iter().filter(|c| wanted(c.name())).cloned().collect();
        Some(
            Type::group_type_builder(root.name())
                .with_fields(kept)
                .build()
                .map_err(|e| corrupt(None, e))?,
        )
    };
    let mut rows = reader.get_row_iter(projection).map_err(|e| corrupt(None, e))?;
    let mut out = Vec::new();
    loop {
        let record = Record::Row(out.len());
        *reading = Some(record);
        let Some(row) = rows.next() else { return Ok(out) };
        let row = row.map_err(|e| corrupt(Some(record), e))?;
        out.push(to_prompt(row.into_columns(), fields, record)?);
    }
}

/// [`DatasetErrorKind::Corrupt`] with the decoder's message, cut to a readable length (an
/// invalid string is reported with all its bytes).
fn corrupt(record: Option<Record>, e: impl std::fmt::Display) -> DatasetErrorKind {
    const MAX: usize = 300;
    let mut reason = e.to_string();
    if let Some((cut, _)) = reason.char_indices().nth(MAX) {
        reason.truncate(cut);
        reason.push_str("...");
    }
    DatasetErrorKind::Corrupt { record, reason }
}

fn open(path: &Path) -> Result<File, DatasetError> {
    let fail = |e| DatasetError { path: path.to_path_buf(), kind: DatasetErrorKind::Open(e) };
    let file = File::open(path).map_err(fail)?;
    if file.metadata().map_err(fail)?.is_dir() {
        return Err(fail(std::io::ErrorKind::IsADirectory.into()));
    }
    Ok(file)
}

/// One field value as the field mapping sees it.
enum Scalar<'a> {
    Str(&'a str),
    /// A number, as answer text.
    Number(String),
    Null,
    /// Anything else, described for [`DatasetErrorKind::WrongType`] (e.g. `"a list"`).
    Other(&'static str),
}

/// A field value of a record: a JSON value (JSONL) or a Parquet field.
trait Cell {
    fn scalar(&self) -> Scalar<'_>;
    fn into_json(self) -> Value;
}

impl Cell for Value {
    fn scalar(&self) -> Scalar<'_> {
        match self {
            Value::String(s) => Scalar::Str(s),
            Value::Number(n) => Scalar::Number(n.to_string()),
            Value::Null => Scalar::Null,
            Value::Bool(_) => Scalar::Other("a boolean"),
            Value::Array(_) => Scalar::Other("an array"),
            Value::Object(_) => Scalar::Other("an object"),
        }
    }

    fn into_json(self) -> Value {
        self
    }
}

impl Cell for Field {
    fn scalar(&self) -> Scalar<'_> {
        match self {
            Field::Str(s) => Scalar::Str(s),
            Field::Null => Scalar::Null,
            Field::Byte(n) => Scalar::Number(n.to_string()),
            Field::Short(n) => Scalar::Number(n.to_string()),
            Field::Int(n) => Scalar::Number(n.to_string()),
            Field::Long(n) => Scalar::Number(n.to_string()),
            Field::UByte(n) => Scalar::Number(n.to_string()),
            Field::UShort(n) => Scalar::Number(n.to_string()),
            Field::UInt(n) => Scalar::Number(n.to_string()),
            Field::ULong(n) => Scalar::Number(n.to_string()),
            Field::Float16(x) => float(f32::from(*x)),
            Field::Float(x) => float(*x),
            Field::Double(x) => double(*x),
            Field::Decimal(_) => match self.to_json_value() {
                Value::String(s) => Scalar::Number(s),
                _ => Scalar::Other("a decimal"),
            },
            Field::Bool(_) => Scalar::Other("a boolean"),
            Field::Bytes(_) => Scalar::Other("binary (not UTF-8 annotated)"),
            Field::Date(_) => Scalar::Other("a date"),
            Field::TimeMillis(_) | Field::TimeMicros(_) => Scalar::Other("a time"),
            Field::TimestampMillis(_) | Field::TimestampMicros(_) => Scalar::Other("a timestamp"),
            Field::Group(_) => Scalar::Other("a struct"),
            Field::ListInternal(_) => Scalar::Other("a list"),
            Field::MapInternal(_) => Scalar::Other("a map"),
        }
    }

    fn into_json(self) -> Value {
        self.to_json_value()
    }
}

/// A float as `serde_json` prints it (`2.0`, `0.1`), so Parquet and JSONL answers agree.
fn double(x: f64) -> Scalar<'static> {
    serde_json::Number::from_f64(x)
        .map_or(Scalar::Other("a non-finite float"), |n| Scalar::Number(n.to_string()))
}

/// An `f32` through its shortest decimal form (`0.1f32` is `0.1`, not `0.10000000149011612`).
fn float(x: f32) -> Scalar<'static> {
    x.to_string().parse().map_or(Scalar::Other("a non-finite float"), double)
}

/// The one field mapping of every loader: a record's fields → a [`Prompt`].
fn to_prompt<C: Cell>(
    mut cells: Vec<(String, C)>,
    fields: &DatasetFields,
    record: Record,
) -> Result<Prompt, DatasetErrorKind> {
    let get = |name: &String, expected: &'static str, accept_number: bool| {
        let Some((_, cell)) = cells.iter().find(|(k, _)| k == name) else {
            return Err(DatasetErrorKind::MissingColumn {
                column: name.clone(),
                available: cells.iter().map(|(k, _)| k.clone()).collect(),
                record: Some(record),
            });
        };
        let wrong =
            |found| DatasetErrorKind::WrongType { column: name.clone(), expected, found, record };
        match cell.scalar() {
            Scalar::Str(s) => Ok(s.to_string()),
            Scalar::Number(n) if accept_number => Ok(n),
            Scalar::Number(_) => Err(wrong("a number")),
            Scalar::Null => Err(DatasetErrorKind::Null { column: name.clone(), record }),
            Scalar::Other(found) => Err(wrong(found)),
        }
    };
    let text = get(&fields.prompt, "a string", false)?;
    let answer = get(&fields.answer, "a string or a number", true)?;
    cells.retain(|(k, _)| {
        if fields.metadata.is_empty() {
            *k != fields.prompt && *k != fields.answer
        } else {
            fields.metadata.contains(k)
        }
    });
    let metadata = cells.into_iter().map(|(k, v)| (k, v.into_json())).collect();
    Ok(Prompt { text, answer: Some(answer), metadata })
}

/// A JSON string or number as text (numbers as `serde_json` prints them), as the loaders read
/// answers; `None` for anything else or no value.
pub fn json_text(v: Option<&Value>) -> Option<String> {
    match v?.scalar() {
        Scalar::Str(s) => Some(s.to_string()),
        Scalar::Number(n) => Some(n),
        Scalar::Null | Scalar::Other(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(r: Result<Vec<Prompt>, DatasetError>) -> DatasetErrorKind {
        r.expect_err("an error").kind
    }

    #[test]
    fn jsonl_loader_names_bad_lines() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let good = dir.path().join("good.jsonl");
        std::fs::write(
            &good,
            "{\"q\": \"1+1?\", \"a\": 2, \"src\": \"x\"}\n\n{\"q\": \"2+2?\", \"a\": \"4\"}\n",
        )?;
        let f = DatasetFields { prompt: "q".into(), answer: "a".into(), metadata: vec![] };
        let p = load_jsonl(&good, &f)?;
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].answer.as_deref(), Some("2"));
        assert_eq!(p[0].metadata["src"], "x");
        assert_eq!(p[0].metadata.len(), 1);
        let bad = dir.path().join("bad.jsonl");
        std::fs::write(&bad, "{\"q\": \"1\", \"a\": 1}\n{oops\n")?;
        let err = load_jsonl(&bad, &f).expect_err("malformed line");
        assert!(err.to_string().contains("line 2: invalid JSON"), "{err}");
        assert!(matches!(
            err.kind,
            DatasetErrorKind::Corrupt { record: Some(Record::Line(2)), .. }
        ));
        std::fs::write(&bad, "{\"q\": \"1\", \"b\": 2}\n")?;
        let DatasetErrorKind::MissingColumn { column, available, record } =
            kind(load_jsonl(&bad, &f))
        else {
            panic!("missing answer")
        };
        assert_eq!(
            (column.as_str(), available, record),
            ("a", vec!["b".into(), "q".into()], Some(Record::Line(1)))
        );
        std::fs::write(&bad, "[1]\n")?;
        assert!(matches!(kind(load_jsonl(&bad, &f)), DatasetErrorKind::Corrupt { .. }));
        std::fs::write(&bad, "{\"q\": 1, \"a\": 1}\n")?;
        assert!(matches!(
            kind(load_jsonl(&bad, &f)),
            DatasetErrorKind::WrongType { found: "a number", expected: "a string", .. }
        ));
        std::fs::write(&bad, "{\"q\": \"1\", \"a\": [1]}\n")?;
        assert!(matches!(
            kind(load_jsonl(&bad, &f)),
            DatasetErrorKind::WrongType { found: "an array", .. }
        ));
        std::fs::write(&bad, "\n{\"q\": \"1\", \"a\": null}\n")?;
        let DatasetErrorKind::Null { column, record } = kind(load_jsonl(&bad, &f)) else {
            panic!("null answer")
        };
        assert_eq!((column.as_str(), record), ("a", Record::Line(2)));
        std::fs::write(&bad, b"{\"q\": \"\xff\", \"a\": 1}\n")?;
        assert!(matches!(
            kind(load_jsonl(&bad, &f)),
            DatasetErrorKind::Corrupt { record: Some(Record::Line(1)), .. }
        ));
        Ok(())
    }

    #[test]
    fn numbers_are_printed_like_json() {
        let text = |c: &dyn Cell| match c.scalar() {
            Scalar::Number(n) => n,
            _ => "not a number".into(),
        };
        assert_eq!(text(&Field::Long(-7)), "-7");
        assert_eq!(text(&Field::ULong(u64::MAX)), u64::MAX.to_string());
        assert_eq!(text(&Field::Double(2.0)), "2.0");
        assert_eq!(text(&Field::Float(0.1)), "0.1");
        assert_eq!(text(&Field::Float(1e-7)), text(&serde_json::json!(1e-7)));
        assert_eq!(text(&Field::Double(2.0)), text(&serde_json::json!(2.0)));
        assert_eq!(text(&Field::Double(f64::NAN)), "not a number");
        assert_eq!(text(&Field::Float(f32::INFINITY)), "not a number");
        assert_eq!(json_text(Some(&serde_json::json!(3))), Some("3".into()));
        assert_eq!(json_text(Some(&serde_json::json!(true))), None);
        assert_eq!(json_text(None), None);
    }

    #[test]
    fn errors_convert_to_the_core_error() {
        let e = DatasetError {
            path: "d.parquet".into(),
            kind: DatasetErrorKind::Null { column: "answer".into(), record: Record::Row(3) },
        };
        assert_eq!(e.to_string(), "d.parquet: row 3: column `answer` is null");
        let core: rl_core::Error = e.into();
        assert!(
            matches!(&core, rl_core::Error::File { path, reason } if path.as_os_str() == "d.parquet" && reason == "row 3: column `answer` is null"),
            "{core:?}"
        );
    }
}
