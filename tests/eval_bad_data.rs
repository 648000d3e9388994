//! Bad benchmark data is a clear error naming the file, the row and the column.

use std::path::Path;

use layerprune::data::tasks::{mmlu_items, task_items, TaskName};

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn all(n: usize) -> Vec<usize> {
    (0..n).collect()
}

#[test]
fn missing_column_is_named() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "boolq/none/validation/data.jsonl",
        "{\"passage\": \"p\", \"answer\": true}\n",
    );
    let e = format!(
        "{:#}",
        task_items(dir.path(), TaskName::Boolq, &all).unwrap_err()
    );
    assert!(
        e.contains("boolq/none/validation: row 0: missing string column \"question\""),
        "{e}"
    );
}

#[test]
fn wrong_answer_index_is_named() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "hails/mmlu_no_train/anatomy/test/data.jsonl",
        "{\"question\": \"q\", \"subject\": \"anatomy\", \"choices\": [\"a\", \"b\", \"c\", \"d\"], \"answer\": 7}\n",
    );
    let e = format!(
        "{:#}",
        mmlu_items(dir.path(), TaskName::Mmlu, "anatomy", 0, &all).unwrap_err()
    );
    assert!(
        e.contains("anatomy/test: row 0: answer 7 is not an index into 4 choices"),
        "{e}"
    );
    write(
        dir.path(),
        "piqa/plain_text/validation/data.jsonl",
        "{\"goal\": \"g\", \"sol1\": \"a\", \"sol2\": \"b\", \"label\": 2}\n",
    );
    let e = format!(
        "{:#}",
        task_items(dir.path(), TaskName::Piqa, &all).unwrap_err()
    );
    assert!(
        e.contains("row 0: answer index 2 is out of range for 2 choices"),
        "{e}"
    );
    write(
        dir.path(),
        "ai2_arc/ARC-Easy/validation/data.jsonl",
        "{\"question\": \"q\", \"choices\": {\"text\": [\"x\", \"y\"], \"label\": [\"A\", \"B\"]}, \"answerKey\": \"C\"}\n",
    );
    let e = format!(
        "{:#}",
        task_items(dir.path(), TaskName::ArcEasy, &all).unwrap_err()
    );
    assert!(
        e.contains("answerKey \"C\" is not one of the labels"),
        "{e}"
    );
}

#[test]
fn empty_and_corrupt_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "boolq/none/validation/data.jsonl", "");
    let e = format!(
        "{:#}",
        task_items(dir.path(), TaskName::Boolq, &all).unwrap_err()
    );
    assert!(
        e.contains("boolq/none/validation: the split has no rows"),
        "{e}"
    );
    write(
        dir.path(),
        "hellaswag/none/validation/data-00000-of-00001.arrow",
        "not arrow",
    );
    let e = format!(
        "{:#}",
        task_items(dir.path(), TaskName::Hellaswag, &all).unwrap_err()
    );
    assert!(
        e.contains("data-00000-of-00001.arrow: not an Arrow IPC stream"),
        "{e}"
    );
    let e = format!(
        "{:#}",
        task_items(dir.path(), TaskName::Winogrande, &all).unwrap_err()
    );
    assert!(e.contains("winogrande/winogrande_xl/validation"), "{e}");
}

#[test]
fn every_committed_pipeline_parses() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    let mut files = Vec::new();
    for dir in [root.clone(), root.join("paper"), root.join("miniature")] {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                files.push(p);
            }
        }
    }
    assert!(files.len() >= 11, "{files:?}");
    for f in files {
        let cfg =
            layerprune::pipeline::load(&f, &[]).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(cfg.stages.contains_key("report"), "{}", f.display());
    }
}
