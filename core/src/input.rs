//! Rules every field of a request follows, whoever sends it (a pod's annotation, a CNI
//! configuration, a gRPC call): no surrounding whitespace. A value with spaces around it is
//! a typo far more often than a wish; DANM compared such values as given too, so `" dynamic"`
//! was never `dynamic` there either. Refusing it with the field named is kinder than
//! guessing.

/// Why a field's text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// The value starts or ends with whitespace.
    #[error("{0:?} has whitespace around it; write it without")]
    Whitespace(String),
}

/// Refuses a value with surrounding whitespace.
pub fn exact(text: &str) -> Result<(), InputError> {
    if text.trim() != text {
        return Err(InputError::Whitespace(text.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn surrounding_whitespace_is_refused_inner_is_not_judged_here() {
        assert_eq!(exact("dynamic"), Ok(()));
        assert_eq!(exact(""), Ok(()));
        assert_eq!(exact("a b"), Ok(()));
        for bad in [" dynamic", "dynamic ", "\tx", "x\n"] {
            assert_eq!(exact(bad), Err(InputError::Whitespace(bad.to_owned())));
        }
    }
}
