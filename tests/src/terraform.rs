//! Terraform's files as the tests read them: terraform/*.tf parsed with
//! hcl-rs, and expressions that use only variable defaults and locals
//! evaluated with its evaluator. `tests/terraform.rs` checks the files
//! against the code with these; `tests/aws_calls.rs` checks the api role's
//! policy against the calls its flows make.

use hcl::eval::{Context, Evaluate};
use hcl::expr::{Traversal, TraversalOperator};
use hcl::{Block, Body, Expression, Map, Value};
use std::path::PathBuf;

/// Every top-level block of every terraform/*.tf, with its file name.
pub struct Terraform {
    pub blocks: Vec<(String, Block)>,
}

impl Terraform {
    pub fn load() -> Terraform {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../terraform");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
            .map(|e| e.expect("dir entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "tf"))
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no .tf files in {}", dir.display());
        let mut blocks = Vec::new();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("read {}: {e}", f.display()));
            let body: Body = hcl::parse(&text).unwrap_or_else(|e| panic!("parse {}: {e}", f.display()));
            let name = f.file_name().expect("file name").to_string_lossy().into_owned();
            blocks.extend(body.into_blocks().map(|b| (name.clone(), b)));
        }
        Terraform { blocks }
    }

    /// `resource "<ty>" "<name>"` (or `data`), as (name, body).
    pub fn of_kind<'a>(&'a self, kind: &'a str, ty: &'a str) -> impl Iterator<Item = (&'a str, &'a Body)> + 'a {
        self.blocks.iter().filter_map(move |(_, b)| {
            let labels = b.labels();
            (b.identifier() == kind && labels.len() == 2 && labels[0].as_str() == ty)
                .then(|| (labels[1].as_str(), b.body()))
        })
    }

    /// `data "aws_iam_policy_document" "<name>"`'s body, which must exist.
    pub fn policy_document(&self, name: &str) -> &Body {
        self.of_kind("data", "aws_iam_policy_document")
            .find(|(label, _)| *label == name)
            .map(|(_, body)| body)
            .unwrap_or_else(|| panic!("data.aws_iam_policy_document.{name}"))
    }

    pub fn resources<'a>(&'a self, ty: &'a str) -> impl Iterator<Item = (&'a str, &'a Body)> + 'a {
        self.of_kind("resource", ty)
    }

    /// The evaluation context: `var` from the variables' defaults (with
    /// overrides), `local` from every local that evaluates in it.
    pub fn context(&self, overrides: &[(&str, Value)]) -> Context<'static> {
        let mut vars = Map::new();
        for (_, b) in &self.blocks {
            if b.identifier() != "variable" {
                continue;
            }
            let name = b.labels()[0].as_str().to_string();
            if let Some(d) = attr(b.body(), "default") {
                let v = d.evaluate(&Context::new()).unwrap_or_else(|e| panic!("default of var.{name}: {e}"));
                vars.insert(name, v);
            }
        }
        for (k, v) in overrides {
            assert!(vars.contains_key(*k), "override of unknown var.{k}");
            vars.insert((*k).to_string(), v.clone());
        }
        let local_exprs: Vec<(&str, &Expression)> = self
            .blocks
            .iter()
            .filter(|(_, b)| b.identifier() == "locals")
            .flat_map(|(_, b)| b.body().attributes().map(|a| (a.key(), a.expr())))
            .collect();
        let mut locals = Map::new();
        // Locals may reference each other: evaluate until nothing new resolves.
        loop {
            let mut ctx = Context::new();
            ctx.declare_var("var", Value::Object(vars.clone()));
            ctx.declare_var("local", Value::Object(locals.clone()));
            let before = locals.len();
            for (k, e) in &local_exprs {
                if !locals.contains_key(*k)
                    && let Ok(v) = e.evaluate(&ctx)
                {
                    locals.insert((*k).to_string(), v);
                }
            }
            if locals.len() == before {
                return ctx;
            }
        }
    }
}

// ------------------------------------------------------------------ HCL helpers

pub fn attr<'a>(body: &'a Body, key: &str) -> Option<&'a Expression> {
    body.attributes().find(|a| a.key() == key).map(|a| a.expr())
}

pub fn blocks<'a>(body: &'a Body, ident: &'a str) -> impl Iterator<Item = &'a Block> + 'a {
    body.blocks().filter(move |b| b.identifier() == ident)
}

pub fn one_block<'a>(body: &'a Body, ident: &str, what: &str) -> &'a Body {
    let found: Vec<&Block> = body.blocks().filter(|b| b.identifier() == ident).collect();
    assert_eq!(found.len(), 1, "{what}: expected exactly one `{ident}` block");
    found[0].body()
}

pub fn eval(ctx: &Context, body: &Body, key: &str, what: &str) -> Value {
    let e = attr(body, key).unwrap_or_else(|| panic!("{what}: `{key}` is not set"));
    e.evaluate(ctx)
        .unwrap_or_else(|err| panic!("{what}: `{key}` does not evaluate from variable defaults and locals: {err}"))
}

pub fn eval_str(ctx: &Context, body: &Body, key: &str, what: &str) -> String {
    let v = eval(ctx, body, key, what);
    v.as_str().unwrap_or_else(|| panic!("{what}: `{key}` is {v:?}, not a string")).to_string()
}

pub fn eval_i64(ctx: &Context, body: &Body, key: &str, what: &str) -> i64 {
    let v = eval(ctx, body, key, what);
    v.as_i64().unwrap_or_else(|| panic!("{what}: `{key}` is {v:?}, not a whole number"))
}

pub fn eval_bool_or_false(ctx: &Context, body: &Body, key: &str, what: &str) -> bool {
    if attr(body, key).is_none() {
        return false;
    }
    let v = eval(ctx, body, key, what);
    v.as_bool().unwrap_or_else(|| panic!("{what}: `{key}` is {v:?}, not a bool"))
}

/// `["a", "b"]` as strings; panics on anything that is not a literal list of
/// literal strings (so nothing can hide from the checks).
pub fn literal_strings(e: &Expression, what: &str) -> Vec<String> {
    let Expression::Array(items) = e else { panic!("{what}: expected a literal list, got {e:?}") };
    items
        .iter()
        .map(|i| match i {
            Expression::String(s) => s.clone(),
            other => panic!("{what}: expected a literal string, got {other:?}"),
        })
        .collect()
}

/// The root and first attribute of a traversal such as `aws_sqs_queue.mail.arn`:
/// ("aws_sqs_queue", "mail", "arn").
pub fn reference(e: &Expression) -> Option<(String, String, String)> {
    let Expression::Traversal(t) = e else { return None };
    let Traversal { expr, operators } = t.as_ref();
    let Expression::Variable(root) = expr else { return None };
    let names: Vec<&str> = operators
        .iter()
        .map(|o| match o {
            TraversalOperator::GetAttr(id) => id.as_str(),
            _ => "",
        })
        .collect();
    match names.as_slice() {
        [name, field, ..] => Some((root.as_str().to_string(), (*name).to_string(), (*field).to_string())),
        _ => None,
    }
}
