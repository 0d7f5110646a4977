//! Interface definitions turned into lists people scan: OpenAPI operations (method, path,
//! summary), gRPC services and their methods, AsyncAPI channels.
//!
//! Only inline definitions are read; one given by URL is shown as a link and never fetched
//! (a page must not wait on the network).

use ieum_model::service::{Interface, InterfaceKind};

/// One HTTP operation of an OpenAPI document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Operation {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) summary: String,
}

/// One gRPC method.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Rpc {
    pub(crate) name: String,
    pub(crate) input: String,
    pub(crate) output: String,
    pub(crate) client_streaming: bool,
    pub(crate) server_streaming: bool,
}

/// One gRPC service with its methods.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct GrpcService {
    /// Fully qualified (`package.Service`) when the file names a package.
    pub(crate) name: String,
    pub(crate) methods: Vec<Rpc>,
}

/// What an interface definition says, as far as the UI reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// Given by URL: not fetched.
    Link(String),
    /// OpenAPI: title, version and operations.
    OpenApi {
        title: Option<String>,
        version: Option<String>,
        operations: Vec<Operation>,
    },
    /// A `.proto` file's services.
    Grpc(Vec<GrpcService>),
    /// AsyncAPI: channels with what is done on them.
    AsyncApi(Vec<(String, String)>),
    /// The inline text could not be read; the page shows it raw.
    Unreadable(String),
}

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Reads one interface definition.
pub(crate) fn parse(iface: &Interface) -> Parsed {
    let Some(text) = &iface.inline else {
        return Parsed::Link(iface.url.clone().unwrap_or_default());
    };
    match iface.kind {
        InterfaceKind::Openapi => openapi(text),
        InterfaceKind::Grpc => {
            let services = proto(text);
            if services.is_empty() {
                Parsed::Unreadable("no `service` block found".into())
            } else {
                Parsed::Grpc(services)
            }
        }
        InterfaceKind::Asyncapi => asyncapi(text),
    }
}

/// YAML or JSON, read as the registry reads a service's OpenAPI document.
fn document(text: &str) -> Result<serde_json::Value, String> {
    ieum_model::service::parse_definition(text)
}

fn openapi(text: &str) -> Parsed {
    let doc = match document(text) {
        Ok(d) => d,
        Err(e) => return Parsed::Unreadable(e),
    };
    let Some(paths) = doc["paths"].as_object() else {
        return Parsed::Unreadable("no `paths` object".into());
    };
    let mut operations = Vec::new();
    for (path, item) in paths {
        let Some(item) = item.as_object() else {
            continue;
        };
        for m in METHODS {
            if let Some(op) = item.get(m) {
                let summary = op["summary"]
                    .as_str()
                    .or_else(|| op["operationId"].as_str())
                    .or_else(|| op["description"].as_str())
                    .unwrap_or_default();
                operations.push(Operation {
                    method: m.to_ascii_uppercase(),
                    path: path.clone(),
                    summary: summary.lines().next().unwrap_or_default().to_owned(),
                });
            }
        }
    }
    Parsed::OpenApi {
        title: doc["info"]["title"].as_str().map(str::to_owned),
        version: doc["info"]["version"].as_str().map(str::to_owned),
        operations,
    }
}

fn asyncapi(text: &str) -> Parsed {
    let doc = match document(text) {
        Ok(d) => d,
        Err(e) => return Parsed::Unreadable(e),
    };
    let Some(channels) = doc["channels"].as_object() else {
        return Parsed::Unreadable("no `channels` object".into());
    };
    let list = channels
        .iter()
        .map(|(name, ch)| {
            // AsyncAPI 2 says publish/subscribe on the channel; 3 lists operations apart.
            let ops: Vec<&str> = ["publish", "subscribe"]
                .into_iter()
                .filter(|op| ch.get(*op).is_some())
                .collect();
            let address = ch["address"].as_str().unwrap_or(name);
            (address.to_owned(), ops.join(", "))
        })
        .collect();
    Parsed::AsyncApi(list)
}

/// Services and methods of a `.proto` file.
///
/// A small tolerant reader rather than a full protobuf parser: the UI only lists
/// `service X { rpc M (A) returns (B); }`, and a definition with imports the server does
/// not have, or a syntax slip elsewhere in the file, should still show its methods.
pub(crate) fn proto(text: &str) -> Vec<GrpcService> {
    let tokens = tokenize(text);
    let mut out = Vec::new();
    let mut package = String::new();
    let mut i = 0;
    while i < tokens.len() {
        match tokens[i].as_str() {
            "package" if i + 1 < tokens.len() => {
                package = tokens[i + 1].clone();
                i += 2;
            }
            "service" if i + 2 < tokens.len() && tokens[i + 2] == "{" => {
                let name = if package.is_empty() {
                    tokens[i + 1].clone()
                } else {
                    format!("{package}.{}", tokens[i + 1])
                };
                let mut svc = GrpcService {
                    name,
                    methods: Vec::new(),
                };
                i += 3;
                let mut depth = 1;
                while i < tokens.len() && depth > 0 {
                    match tokens[i].as_str() {
                        "{" => depth += 1,
                        "}" => depth -= 1,
                        "rpc" if depth == 1 => {
                            if let Some((rpc, next)) = rpc(&tokens, i + 1) {
                                svc.methods.push(rpc);
                                i = next;
                                continue;
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
                out.push(svc);
            }
            _ => i += 1,
        }
    }
    out
}

/// `M ( [stream] A ) returns ( [stream] B )` from `at`; the method and where to go on.
fn rpc(t: &[String], at: usize) -> Option<(Rpc, usize)> {
    let mut i = at;
    let name = t.get(i)?.clone();
    i += 1;
    let (input, client_streaming, next) = message(t, i)?;
    i = next;
    if t.get(i)? != "returns" {
        return None;
    }
    let (output, server_streaming, next) = message(t, i + 1)?;
    Some((
        Rpc {
            name,
            input,
            output,
            client_streaming,
            server_streaming,
        },
        next,
    ))
}

/// `( [stream] Type )` from `at`.
fn message(t: &[String], at: usize) -> Option<(String, bool, usize)> {
    let mut i = at;
    if t.get(i)? != "(" {
        return None;
    }
    i += 1;
    let streaming = t.get(i)? == "stream";
    if streaming {
        i += 1;
    }
    let ty = t.get(i)?.clone();
    if t.get(i + 1)? != ")" {
        return None;
    }
    Some((ty, streaming, i + 2))
}

/// Words, and `{ } ( ) ; = < > ,` as tokens of their own; comments and strings dropped.
fn tokenize(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut chars = text.chars().peekable();
    let flush = |word: &mut String, out: &mut Vec<String>| {
        if !word.is_empty() {
            out.push(std::mem::take(word));
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                flush(&mut word, &mut out);
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                flush(&mut word, &mut out);
                chars.next();
                let mut star = false;
                for c in chars.by_ref() {
                    if star && c == '/' {
                        break;
                    }
                    star = c == '*';
                }
            }
            '"' | '\'' => {
                flush(&mut word, &mut out);
                let mut escaped = false;
                for d in chars.by_ref() {
                    if !escaped && d == c {
                        break;
                    }
                    escaped = !escaped && d == '\\';
                }
                out.push("\"\"".into());
            }
            '{' | '}' | '(' | ')' | ';' | '=' | '<' | '>' | ',' | '[' | ']' => {
                flush(&mut word, &mut out);
                out.push(c.to_string());
            }
            c if c.is_whitespace() => flush(&mut word, &mut out),
            c => word.push(c),
        }
    }
    flush(&mut word, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proto_services_and_methods() {
        let text = r#"
            syntax = "proto3";
            package shop.stock.v1; // the stock service
            import "google/protobuf/empty.proto";
            /* reservations { are } here */
            service Stock {
              option (foo) = "bar";
              rpc Reserve (ReserveRequest) returns (ReserveReply);
              rpc Watch(WatchRequest) returns (stream Level) { option deprecated = true; }
              rpc Upload (stream Chunk) returns (stream Ack) {}
            }
            message ReserveRequest { string sku = 1; map<string, int32> x = 2; }
            service Health { rpc Check (A) returns (B); }
        "#;
        let s = proto(text);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].name, "shop.stock.v1.Stock");
        let names: Vec<&str> = s[0].methods.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["Reserve", "Watch", "Upload"]);
        assert!(s[0].methods[1].server_streaming && !s[0].methods[1].client_streaming);
        assert!(s[0].methods[2].server_streaming && s[0].methods[2].client_streaming);
        assert_eq!(s[0].methods[0].output, "ReserveReply");
        assert_eq!(s[1].methods.len(), 1);
    }

    #[test]
    fn openapi_in_yaml_and_json() {
        let yaml = "openapi: 3.0.0\ninfo: {title: Orders, version: '2'}\npaths:\n  /orders:\n    get: {summary: List orders}\n    post: {operationId: createOrder}\n  /orders/{id}:\n    parameters: []\n    delete: {}\n";
        let Parsed::OpenApi {
            title, operations, ..
        } = openapi(yaml)
        else {
            panic!("not parsed");
        };
        assert_eq!(title.as_deref(), Some("Orders"));
        let ops: Vec<String> = operations
            .iter()
            .map(|o| format!("{} {} {}", o.method, o.path, o.summary))
            .collect();
        assert_eq!(
            ops,
            [
                "GET /orders List orders",
                "POST /orders createOrder",
                "DELETE /orders/{id} "
            ]
        );
        let json = r#"{"openapi":"3.1.0","paths":{"/a":{"get":{"summary":"A"}}}}"#;
        assert!(
            matches!(openapi(json), Parsed::OpenApi { operations, .. } if operations.len() == 1)
        );
        assert!(matches!(openapi("::: not yaml"), Parsed::Unreadable(_)));
    }
}
