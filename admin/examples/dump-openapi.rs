//! Prints the admin API's OpenAPI document, exactly as `/openapi.json`
//! serves it. Regenerate the committed copy with
//! `cargo run -p sockeye-admin --example dump-openapi > docs/openapi.json`.

#[allow(clippy::print_stdout, reason = "the document is the program's output")]
fn main() {
    print!("{}", sockeye_admin::openapi_json());
}
