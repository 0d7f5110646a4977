//! Configuration commands: `apply`, `validate`, `diff`, `delete`, `history`, `schema`, and
//! `get` for resource kinds.

use std::path::PathBuf;

use ieum_model::resource::{self, Kind, Resource};
use reqwest::Method;
use serde_json::Value;

use crate::cli::Context;
use crate::client::Failure;
use crate::output::{self, Format, Table, ago, now};

/// `-f FILE|DIR`, repeatable.
#[derive(Debug, clap::Args)]
pub(crate) struct Files {
    /// A YAML/JSON file (many documents allowed) or a folder of them; repeatable.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
}

/// `ieum apply -f …`.
#[derive(Debug, clap::Args)]
pub(crate) struct ApplyArgs {
    #[command(flatten)]
    files: Files,
    /// Validate and show what would change; write nothing.
    #[arg(long)]
    dry_run: bool,
}

/// Every file named, folders expanded to their `.yaml`, `.yml` and `.json` files (sorted).
fn expand(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Failure> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", p.display())))?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|f| {
                    f.extension()
                        .is_some_and(|x| x == "yaml" || x == "yml" || x == "json")
                })
                .collect();
            files.sort();
            out.extend(files);
        } else if p.exists() {
            out.push(p.clone());
        } else {
            return Err(Failure::Usage(format!("{} does not exist", p.display())));
        }
    }
    Ok(out)
}

/// Reads and checks every resource locally; all problems of all files at once.
fn load(paths: &[PathBuf]) -> anyhow::Result<Vec<Resource>> {
    let mut resources = Vec::new();
    let mut problems = Vec::new();
    for file in expand(paths)? {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", file.display())))?;
        match resource::parse_documents(&text) {
            Ok(docs) => {
                for doc in docs {
                    let id = format!("{}/{}", doc.kind, doc.metadata.name);
                    // API keys are made by `ieum apikey create`, never from files.
                    let checked = resource::applicable(&doc)
                        .map_err(|e| vec![e])
                        .and_then(|()| resource::check(&doc));
                    if let Err(errs) = checked {
                        problems.extend(
                            errs.into_iter().map(|e| {
                                format!("{}: {}", file.display(), e.in_resource(id.clone()))
                            }),
                        );
                    }
                    resources.push(doc);
                }
            }
            Err(e) => problems.push(format!("{}: {e}", file.display())),
        }
    }
    if !problems.is_empty() {
        return Err(Invalid(problems).into());
    }
    if resources.is_empty() {
        return Err(Failure::Usage("the files hold no resources".into()).into());
    }
    Ok(resources)
}

/// Local validation failed (exit 1).
#[derive(Debug)]
pub(crate) struct Invalid(Vec<String>);

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} problem(s):", self.0.len())?;
        for p in &self.0 {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Invalid {}

pub(crate) async fn send_apply(
    ctx: &Context,
    resources: Vec<Resource>,
    dry_run: bool,
) -> anyhow::Result<Value> {
    let client = ctx.client()?;
    let path = if dry_run {
        "/v1/apply?dryRun=true"
    } else {
        "/v1/apply"
    };
    Ok(client
        .write(
            Method::POST,
            path,
            Some(&serde_json::json!({"resources": resources})),
        )
        .await?)
}

fn print_warnings(body: &Value) {
    for r in body["results"].as_array().into_iter().flatten() {
        for w in r["warnings"].as_array().into_iter().flatten() {
            if let Ok(w) = serde_json::from_value::<ieum_model::ValidationError>(w.clone()) {
                eprintln!("warning: {w}");
            }
        }
    }
}

pub(crate) async fn apply(ctx: &Context, args: ApplyArgs) -> anyhow::Result<()> {
    let resources = load(&args.files.files)?;
    let body = send_apply(ctx, resources, args.dry_run).await?;
    print_warnings(&body);
    if output::structured(ctx.format, &body)? {
        return Ok(());
    }
    let suffix = if args.dry_run { " (dry run)" } else { "" };
    let mut out = String::new();
    for r in body["results"].as_array().into_iter().flatten() {
        out += &format!(
            "{}/{} {} (revision {}){suffix}\n",
            r["kind"].as_str().unwrap_or("?"),
            r["name"].as_str().unwrap_or("?"),
            r["outcome"].as_str().unwrap_or("?"),
            r["revision"]
        );
    }
    output::out(&out)
}

pub(crate) async fn validate(ctx: &Context, files: Files) -> anyhow::Result<()> {
    let resources = load(&files.files)?;
    if output::structured(ctx.format, &serde_json::json!({"valid": resources.len()}))? {
        return Ok(());
    }
    output::out(&format!("{} resources valid\n", resources.len()))
}

/// `ieum diff -f …`: what applying would change, field by field.
pub(crate) async fn diff(ctx: &Context, files: Files) -> anyhow::Result<()> {
    let resources = load(&files.files)?;
    let body = send_apply(ctx, resources, true).await?;
    print_warnings(&body);
    if output::structured(ctx.format, &body)? {
        return Ok(());
    }
    let mut out = String::new();
    for r in body["results"].as_array().into_iter().flatten() {
        let outcome = r["outcome"].as_str().unwrap_or("?");
        if outcome == "unchanged" {
            continue;
        }
        out += &format!(
            "{}/{} ({outcome})\n",
            r["kind"].as_str().unwrap_or("?"),
            r["name"].as_str().unwrap_or("?")
        );
        out += &diff_lines(&r["diff"]);
    }
    if out.is_empty() {
        out = "no changes\n".into();
    }
    output::out(&out)
}

fn diff_lines(diff: &Value) -> String {
    let mut out = String::new();
    for c in diff.as_array().into_iter().flatten() {
        let path = c["path"].as_str().unwrap_or("");
        let line = match c["op"].as_str() {
            Some("added") => format!("  + {path}: {}\n", c["after"]),
            Some("removed") => format!("  - {path}: {}\n", c["before"]),
            _ => format!("  ~ {path}: {} -> {}\n", c["before"], c["after"]),
        };
        out += &line;
    }
    out
}

fn kind(s: &str) -> Result<Kind, Failure> {
    Kind::parse(s)
        .ok_or_else(|| Failure::Usage(format!("unknown kind `{s}`: use {}", Kind::names())))
}

/// `ieum get KIND [NAME]` for resource kinds.
pub(crate) async fn get(ctx: &Context, kind_s: &str, name: Option<&str>) -> anyhow::Result<()> {
    let k = kind(kind_s)?;
    let client = ctx.client()?;
    match name {
        Some(name) => {
            let r: Value = client
                .get(&format!("/v1/resources/{}/{name}", k.as_str()))
                .await?;
            // One resource reads best as the YAML it was written in.
            let format = if ctx.format == Format::Table {
                Format::Yaml
            } else {
                ctx.format
            };
            output::structured(format, &r)?;
            Ok(())
        }
        None => {
            let list: Value = client.get(&format!("/v1/resources/{}", k.as_str())).await?;
            if output::structured(ctx.format, &list)? {
                return Ok(());
            }
            let now = now();
            let mut t = Table::new(&["NAME", "REVISION", "UPDATED", "AUTHOR"]);
            for r in list.as_array().into_iter().flatten() {
                let m = &r["metadata"];
                let updated = m["updatedAt"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .map_or("-".into(), |t| ago(t, now));
                t.row(vec![
                    m["name"].as_str().unwrap_or("").to_owned(),
                    m["revision"].to_string(),
                    updated,
                    m["author"].as_str().unwrap_or("").to_owned(),
                ]);
            }
            output::out(&t.render())
        }
    }
}

/// `ieum delete KIND NAME`.
#[derive(Debug, clap::Args)]
pub(crate) struct NamedArgs {
    /// The kind (any case, singular or plural).
    kind: String,
    /// The name.
    name: String,
}

pub(crate) async fn delete(ctx: &Context, args: NamedArgs) -> anyhow::Result<()> {
    let k = kind(&args.kind)?;
    let client = ctx.client()?;
    let r: Value = client
        .write(
            Method::DELETE,
            &format!("/v1/resources/{}/{}", k.as_str(), args.name),
            None::<&()>,
        )
        .await?;
    if output::structured(ctx.format, &r)? {
        return Ok(());
    }
    output::out(&format!(
        "{}/{} deleted (revision {})\n",
        k.as_str(),
        args.name,
        r["revision"]
    ))
}

pub(crate) async fn history(ctx: &Context, args: NamedArgs) -> anyhow::Result<()> {
    let k = kind(&args.kind)?;
    let client = ctx.client()?;
    let revisions: Value = client
        .get(&format!(
            "/v1/resources/{}/{}/history",
            k.as_str(),
            args.name
        ))
        .await?;
    if output::structured(ctx.format, &revisions)? {
        return Ok(());
    }
    let now = now();
    let mut out = String::new();
    for r in revisions.as_array().into_iter().flatten() {
        let at = r["at"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .map_or("-".into(), |t| ago(t, now));
        let what = if r["deleted"] == true { " deleted" } else { "" };
        out += &format!(
            "revision {} by {} {at}{what}\n",
            r["revision"],
            r["author"].as_str().unwrap_or("?")
        );
        let created = r["diff"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["path"] == "spec" && c["op"] == "added");
        if created {
            out += "  created\n";
        } else if r["deleted"] != true {
            out += &diff_lines(&r["diff"]);
        }
    }
    output::out(&out)
}

/// `ieum schema KIND`.
#[derive(Debug, clap::Args)]
pub(crate) struct SchemaArgs {
    /// The kind.
    kind: String,
}

pub(crate) fn schema(args: &SchemaArgs) -> anyhow::Result<()> {
    let k = kind(&args.kind)?;
    output::out(&(serde_json::to_string_pretty(&resource::json_schema(k))? + "\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn folders_expand_to_their_config_files_in_order() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["b.yaml", "a.yml", "c.json", "notes.txt"] {
            std::fs::write(dir.path().join(f), "").unwrap();
        }
        let files = expand(&[dir.path().to_owned()]).unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(names, ["a.yml", "b.yaml", "c.json"]);
        assert!(expand(&[Path::new("/nonexistent/x.yaml").to_owned()]).is_err());
    }
}
