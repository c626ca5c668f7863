//! What lm-eval 0.4's task configs make of one row of each dataset: the question text, the
//! choices, the gold index (lm-eval's `doc_to_text`, `doc_to_choice`, `doc_to_target` and
//! `process_docs` for arc_easy, arc_challenge, hellaswag, piqa, winogrande and mmlu).

use super::TaskKind;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

/// One row as lm-eval prompts it.
#[derive(Clone, Debug, PartialEq)]
pub struct Prompt {
    /// `doc_to_text` (WinoGrande: unused, its contexts are the choices).
    pub text: String,
    /// `doc_to_choice`: answer texts (MMLU: the letters; WinoGrande: the partial sentences).
    pub choices: Vec<String>,
    /// The shared continuation of WinoGrande's partial scoring (`doc_to_target`).
    pub target: Option<String>,
    /// Index of the right choice.
    pub gold: usize,
}

fn field<'a>(row: &'a Value, key: &str) -> Result<&'a str> {
    row[key]
        .as_str()
        .ok_or_else(|| anyhow!("missing text field '{key}'"))
}

fn strings(value: &Value, key: &str) -> Result<Vec<String>> {
    value
        .as_array()
        .ok_or_else(|| anyhow!("missing list '{key}'"))?
        .iter()
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| anyhow!("'{key}' holds a non-string"))
        })
        .collect()
}

/// An integer field stored as a number or as a string of digits.
fn index(row: &Value, key: &str) -> Result<usize> {
    match &row[key] {
        Value::Number(n) => n.as_u64().map(|v| v as usize),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .ok_or_else(|| anyhow!("missing integer field '{key}'"))
}

/// The prompt of `row` for a task of `kind`.
pub fn prompt(kind: TaskKind, row: &Value) -> Result<Prompt> {
    let prompt = match kind {
        TaskKind::ArcEasy | TaskKind::ArcChallenge => {
            let choices = strings(&row["choices"]["text"], "choices.text")?;
            let labels = strings(&row["choices"]["label"], "choices.label")?;
            let key = field(row, "answerKey")?;
            let gold = labels
                .iter()
                .position(|l| l == key)
                .ok_or_else(|| anyhow!("answerKey '{key}' is not among the labels {labels:?}"))?;
            Prompt {
                text: format!("Question: {}\nAnswer:", field(row, "question")?),
                choices,
                target: None,
                gold,
            }
        }
        TaskKind::HellaSwag => {
            let ctx = format!(
                "{} {}",
                field(row, "ctx_a")?,
                capitalize(field(row, "ctx_b")?)
            );
            let query = format!("{}: {ctx}", field(row, "activity_label")?);
            let endings = strings(&row["endings"], "endings")?;
            Prompt {
                text: preprocess(&query),
                choices: endings.iter().map(|e| preprocess(e)).collect(),
                target: None,
                gold: index(row, "label")?,
            }
        }
        TaskKind::Piqa => Prompt {
            text: format!("Question: {}\nAnswer:", field(row, "goal")?),
            choices: vec![field(row, "sol1")?.into(), field(row, "sol2")?.into()],
            target: None,
            gold: index(row, "label")?,
        },
        TaskKind::WinoGrande => {
            let sentence = field(row, "sentence")?;
            let blank = sentence
                .find('_')
                .ok_or_else(|| anyhow!("sentence without a blank '_'"))?;
            let before = &sentence[..blank];
            let options = [field(row, "option1")?, field(row, "option2")?];
            let gold = match field(row, "answer")? {
                "1" => 0,
                "2" => 1,
                other => bail!("answer '{other}' is neither \"1\" nor \"2\""),
            };
            Prompt {
                text: String::new(),
                choices: options.iter().map(|o| format!("{before}{o}")).collect(),
                target: Some(python_strip(&sentence[blank + 1..]).to_string()),
                gold,
            }
        }
        TaskKind::Mmlu => {
            let options = strings(&row["choices"], "choices")?;
            if options.len() != 4 {
                bail!(
                    "an MMLU question needs 4 choices, this one has {}",
                    options.len()
                );
            }
            let mut text = python_strip(field(row, "question")?).to_string();
            for (letter, option) in ["A", "B", "C", "D"].iter().zip(&options) {
                text.push_str(&format!("\n{letter}. {option}"));
            }
            text.push_str("\nAnswer:");
            Prompt {
                text,
                choices: ["A", "B", "C", "D"].map(String::from).to_vec(),
                target: None,
                gold: index(row, "answer")?,
            }
        }
    };
    if prompt.gold >= prompt.choices.len() {
        bail!(
            "gold answer {} outside the {} choices",
            prompt.gold,
            prompt.choices.len()
        );
    }
    Ok(prompt)
}

/// MMLU's per-subject description (lm-eval's `_generate_configs.py`).
pub fn mmlu_description(subject: &str) -> String {
    format!(
        "The following are multiple choice questions (with answers) about {}.\n\n",
        subject.replace('_', " ")
    )
}

/// The prompt of row `i` of `rows`, with the row number in errors.
pub fn prompt_of(kind: TaskKind, rows: &[Value], i: usize) -> Result<Prompt> {
    prompt(kind, &rows[i]).with_context(|| format!("{} row {}", kind.name(), i + 1))
}

/// Python's `str.strip()` (whitespace as `str.isspace`, which also counts U+001C..U+001F).
fn python_strip(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
}

/// Python's `str.capitalize()`: the first character upper-cased, the rest lower-cased.
fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first
            .to_uppercase()
            .chain(chars.flat_map(char::to_lowercase))
            .collect(),
        None => String::new(),
    }
}

/// HellaSwag's `preprocess`: strip, " [title]" → ". ", drop `[...]` (shortest, within a line),
/// then one left-to-right pass replacing double spaces by single ones.
fn preprocess(text: &str) -> String {
    let text = python_strip(text).replace(" [title]", ". ");
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find([']', '\n']) {
            Some(close) if after.as_bytes()[close] == b']' => rest = &after[close + 1..],
            _ => {
                out.push('[');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out.replace("  ", " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hellaswag_preprocessing_follows_the_python_steps() {
        assert_eq!(
            // Brackets go after the strip, so the space after "[header]" stays (as in Python).
            preprocess("  [header] How to x [title] Do it.  "),
            " How to x. Do it."
        );
        assert_eq!(preprocess("[substeps] Many  people"), " Many people");
        assert_eq!(preprocess("a   b"), "a  b");
        assert_eq!(preprocess("open [ only"), "open [ only");
        assert_eq!(preprocess("x [a\nb] y"), "x [a\nb] y");
        assert_eq!(capitalize("the LADY"), "The lady");
    }
}
