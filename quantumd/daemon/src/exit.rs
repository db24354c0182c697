//! quantumd's exit status: 1 for any other error (systemd restarts quantumd
//! after it, `Restart=on-failure`), and
//! [`IDENTITY_UNUSABLE`] when the node identity cannot be used and no
//! restart will change that: quantumd.service's `RestartPreventExitStatus=`
//! names it, so systemd stops instead of logging the same error every 2 s.

use std::process::ExitCode;

use quantum_trust::SealError;

use crate::identity::IdentityError;

/// EX_CONFIG (sysexits.h): the sealed identity is unusable (sealed by
/// another TPM or before this one was cleared, PCR 7 changed, a damaged or
/// unsafe identity file) and a person must act, as the message says. An
/// unreachable TPM is not one of these: it may answer at the next try.
pub const IDENTITY_UNUSABLE: u8 = 78;

/// The identity error behind `err` that no restart can mend, if it is one.
pub fn unusable_identity(err: &anyhow::Error) -> Option<&SealError> {
    err.chain()
        .find_map(|e| e.downcast_ref::<IdentityError>())
        .and_then(IdentityError::seal_error)
        .filter(|e| e.is_permanent())
}

/// The exit status for `err`.
pub fn status(err: &anyhow::Error) -> u8 {
    if unusable_identity(err).is_some() {
        IDENTITY_UNUSABLE
    } else {
        1
    }
}

/// Says why quantumd stops, once, and returns the status to exit with.
pub fn report(err: &anyhow::Error) -> ExitCode {
    let status = status(err);
    match unusable_identity(err) {
        Some(identity) => {
            tracing::error!(
                exit_status = status,
                error = %format!("{err:#}"),
                "the node identity cannot be used; quantumd stops and systemd does not restart it"
            );
            // Shown by `systemctl status quantumd`; no-op outside systemd.
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&format!("stopped: {identity}"))]);
        }
        // What returning the error from main would print.
        None => eprintln!("Error: {err:?}"),
    }
    ExitCode::from(status)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use anyhow::Context as _;

    use super::*;

    fn tpm_error() -> tss_esapi::Error {
        tss_esapi::Error::WrapperError(tss_esapi::WrapperErrorKind::InternalError)
    }

    fn sealed() -> PathBuf {
        PathBuf::from("/var/lib/quantumd/identity/node.sealed")
    }

    /// As `serve` returns it: the store's error inside the daemon's, with context.
    fn at_start(seal: SealError) -> anyhow::Error {
        Err::<(), _>(IdentityError::Load {
            store: "TPM at \"device:/dev/tpmrm0\"".to_owned(),
            source: Box::new(seal),
        })
        .context("the node identity (see `tpm` in the configuration)")
        .unwrap_err()
    }

    #[test]
    fn an_unusable_identity_exits_78_and_anything_else_1() {
        let check = |err: anyhow::Error, expect: u8| assert_eq!(status(&err), expect, "{err:#}");
        check(
            at_start(SealError::SealedByAnotherTpm {
                path: sealed(),
                tcti: "device:/dev/tpmrm0".to_owned(),
                source: tpm_error(),
            }),
            IDENTITY_UNUSABLE,
        );
        check(
            at_start(SealError::PcrChanged {
                path: sealed(),
                source: tpm_error(),
            }),
            IDENTITY_UNUSABLE,
        );
        check(at_start(SealError::Decrypt { path: sealed() }), IDENTITY_UNUSABLE);
        check(
            at_start(SealError::BadSealedFile {
                path: sealed(),
                reason: "not JSON".to_owned(),
            }),
            IDENTITY_UNUSABLE,
        );
        check(
            at_start(SealError::InsecureMode {
                path: sealed(),
                mode: 0o644,
            }),
            IDENTITY_UNUSABLE,
        );
        // Opening the store fails the same way when it is the store's error.
        check(
            anyhow::Error::new(IdentityError::Open {
                dir: "/var/lib/quantumd/identity".to_owned(),
                source: Box::new(SealError::NotRegular { path: sealed() }),
            }),
            IDENTITY_UNUSABLE,
        );

        // May pass: at boot the TPM can answer late, a TPM command can fail once.
        check(
            at_start(SealError::TpmUnreachable {
                path: sealed(),
                tcti: "device:/dev/tpmrm0".to_owned(),
                source: tpm_error(),
            }),
            1,
        );
        check(
            at_start(SealError::Tpm {
                tcti: "device:/dev/tpmrm0".to_owned(),
                action: "creating the storage key",
                source: tpm_error(),
            }),
            1,
        );
        check(
            at_start(SealError::Io {
                path: sealed(),
                action: "read",
                source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
            }),
            1,
        );
        check(
            anyhow::Error::new(IdentityError::Files {
                action: "write the public key to",
                path: "/var/lib/quantumd/identity/node.pub".to_owned(),
                source: std::io::Error::from(std::io::ErrorKind::Other),
            }),
            1,
        );
        check(anyhow::anyhow!("cannot connect to the system bus"), 1);
    }
}
