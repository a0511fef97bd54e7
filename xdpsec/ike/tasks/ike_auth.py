"""IKE_AUTH (RFC 7296 §1.2, §2.15): identities and proof of them; the first child rides along (child_create).

    HDR, SK {IDi, [CERT,] [CERTREQ,] [IDr,] AUTH, [N(INITIAL_CONTACT)], SAi2, TSi, TSr}  -->
                                     <--  HDR, SK {IDr, [CERT,] AUTH, SAr2, TSi, TSr}

Each side signs (or MACs with the PSK) its own IKE_SA_INIT message, the peer's nonce and prf(SK_p, ID
payload body) (§2.15), which binds the authentication to this IKE SA's key exchange. A responder that cannot
verify the initiator answers AUTHENTICATION_FAILED alone and forgets the SA (§2.21.2); an initiator that cannot
verify the responder deletes the IKE SA with an INFORMATIONAL exchange.
"""

from __future__ import annotations

from datetime import UTC, datetime

from xdpsec.crypto.auth import (
    AuthError,
    Signer,
    TrustStore,
    identity_matches,
    psk_auth,
    psk_verify,
    signed_octets,
    verify_signature,
)
from xdpsec.ike import wire
from xdpsec.ike.conf import AuthMethod
from xdpsec.ike.consts import AuthMethodId, CertEncoding, ExchangeType, IdType, NotifyType, PayloadType
from xdpsec.ike.events import Failure, IkeUp
from xdpsec.ike.tasks import Inbound, Status, Task, notify, notify_name, payload
from xdpsec.ike.tasks.ike_intermediate import int_auth, pending


def id_body(ident: wire.ID) -> bytes:
    """The ID payload without its generic header: what prf(SK_p, ...) covers (§2.15)."""
    return bytes([ident.id_type, 0, 0, 0]) + ident.data


class IkeAuth(Task):
    exchange = ExchangeType.IKE_AUTH

    def __init__(self, ike, *, initiator: bool):
        super().__init__(ike, initiator=initiator)
        self.auth: wire.Auth | None = None  # the responder's AUTH, computed once the initiator is verified

    # --- our side -------------------------------------------------------------------------------------------

    def _signer(self) -> Signer:
        local = self.ike.conn.local
        return Signer(local.private_key, local.certs, rsa_pss=local.rsa_pss)

    def _my_id(self) -> wire.ID:
        local, ike = self.ike.conn.local, self.ike
        if local.identity is not None:
            return wire.ID(local.identity.id_type, local.identity.data)
        if local.method == AuthMethod.PUBKEY and local.certs:
            return wire.ID(IdType.DER_ASN1_DN, self._signer().subject_der)
        addr = ike.local[0]
        return wire.ID(IdType.IPV4_ADDR if addr.version == 4 else IdType.IPV6_ADDR, addr.packed)

    def _signed_octets(self, of_initiator: bool, ident: wire.ID) -> bytes:
        """§2.15: InitiatorSignedOctets = RealMessage1 | NonceRData | prf(SK_pi, IDi') [| IntAuth], and the
        responder's the mirror image. We sign our own side's and verify the peer's. IntAuth covers the
        IKE_INTERMEDIATE exchanges, if any (RFC 9242 §3.3.2, tasks/ike_intermediate.py); SK_p are then the keys
        after the last additional key exchange."""
        ike = self.ike
        keys, prf = ike.crypto.keys, ike.crypto.proposal.prf
        if of_initiator:
            return signed_octets(ike.init_request, ike.nr, prf, keys.sk_pi, id_body(ident)) + int_auth(ike)
        return signed_octets(ike.init_response, ike.ni, prf, keys.sk_pr, id_body(ident)) + int_auth(ike)

    def _my_auth(self, ident: wire.ID) -> wire.Auth:
        """AUTH over InitiatorSignedOctets / ResponderSignedOctets (§2.15). Raises AuthError."""
        ike = self.ike
        prf = ike.crypto.proposal.prf
        octets = self._signed_octets(ike.initiator, ident)
        local = ike.conn.local
        if local.method == AuthMethod.PSK:
            return wire.Auth(AuthMethodId.SHARED_KEY_MIC, psk_auth(prf, local.psk, octets))
        method, data = self._signer().sign(octets, ike.peer_hash_algorithms)
        return wire.Auth(method, data)

    def _my_payloads(self, out: list[wire.Payload], id_type: int, ident: wire.ID, auth: wire.Auth) -> None:
        out.append(payload(id_type, ident))
        local = self.ike.conn.local
        if local.method == AuthMethod.PUBKEY:
            out += [payload(PayloadType.CERT, wire.Cert(CertEncoding.X509_SIGNATURE, c)) for c in local.certs]
        if self.initiator:
            self._certreq(out)
            remote_id = self.ike.conn.remote.identity
            if remote_id is not None:  # §2.5: "which of the responder's identities" we want to talk to
                out.append(payload(PayloadType.IDr, wire.ID(remote_id.id_type, remote_id.data)))
        out.append(payload(PayloadType.AUTH, auth))

    def _certreq(self, out: list[wire.Payload]) -> None:
        remote = self.ike.conn.remote
        if remote.method == AuthMethod.PUBKEY and remote.cacerts:
            out.append(payload(PayloadType.CERTREQ, wire.CertReq(CertEncoding.X509_SIGNATURE,
                                                                 TrustStore(remote.cacerts).certreq_hashes())))

    # --- the peer's side ------------------------------------------------------------------------------------

    def _verify(self, ident: wire.ID, auth: wire.Auth, certs: list[bytes]) -> str | None:
        """Why the peer's AUTH does not prove the identity we require, or None if it does."""
        ike = self.ike
        prf = ike.crypto.proposal.prf
        octets = self._signed_octets(not ike.initiator, ident)
        remote = ike.conn.remote
        if remote.method == AuthMethod.PSK:
            if auth.method != AuthMethodId.SHARED_KEY_MIC:
                return f"peer authenticated with method {auth.method}, we require a pre-shared key"
            if not identity_matches(ident.id_type, ident.data, None, remote.identity):
                return "peer identity is not the configured one"
            if not psk_verify(prf, remote.psk or ike.conn.local.psk, octets, auth.data):
                return "pre-shared key MIC does not verify"
            return None
        if not certs:
            return "no certificate from the peer"
        try:
            TrustStore(remote.cacerts).validate(certs[0], certs[1:], datetime.fromtimestamp(ike.now, UTC))
        except AuthError as e:
            return str(e)
        if not identity_matches(ident.id_type, ident.data, certs[0], remote.identity):
            return "peer identity is not the configured one, or not named by its certificate"
        if not verify_signature(certs[0], auth.method, auth.data, octets):
            return "signature does not verify"
        return None

    def _peer(self, inbound: Inbound) -> tuple[wire.ID | None, wire.Auth | None, list[bytes]]:
        id_type = PayloadType.IDr if self.initiator else PayloadType.IDi
        certs = [c.data for c in inbound.all(PayloadType.CERT) if c.encoding == CertEncoding.X509_SIGNATURE]
        return inbound.first(id_type), inbound.first(PayloadType.AUTH), certs

    def _established(self) -> None:
        from xdpsec.ike.sa import State

        ike = self.ike
        ike.state = State.ESTABLISHED
        ike.announced = True
        ike.start_lifetime(ike.now)
        ike.services.established(ike)
        crypto = ike.crypto
        ike.services.emit(IkeUp(ike.name, ike.ispi, ike.rspi, ike.remote, ike.local,
                                crypto.proposal if crypto else None, crypto.keys if crypto else None))

    # --- the exchange ---------------------------------------------------------------------------------------

    def build(self, out: list[wire.Payload]) -> None:
        ike = self.ike
        if not self.initiator:
            self._my_payloads(out, PayloadType.IDr, self._my_id(), self.auth)
            return
        ident = self._my_id()
        try:
            auth = self._my_auth(ident)
        except AuthError as e:
            ike.services.emit(Failure(ike.name, f"cannot authenticate: {e}"))
            ike.die("cannot authenticate")
            return
        self._my_payloads(out, PayloadType.IDi, ident, auth)
        out.append(notify(NotifyType.INITIAL_CONTACT))  # §2.4: we keep no older IKE SA with this peer

    def process(self, inbound: Inbound) -> Status:
        ike = self.ike
        ident, auth, certs = self._peer(inbound)
        if not self.initiator:
            if pending(ike):
                # RFC 9370 §2.2.2: every negotiated key exchange precedes IKE_AUTH; skipping one would leave
                # the SA with classic keys only.
                raise wire.IkeError(NotifyType.INVALID_SYNTAX, "IKE_AUTH before the additional key exchanges")
            if ident is None or auth is None:
                raise wire.IkeError(NotifyType.INVALID_SYNTAX, "IKE_AUTH without IDi or AUTH")
            reason = self._verify(ident, auth, certs)
            if reason is not None:
                ike.services.count("auth_failed")
                raise wire.IkeError(NotifyType.AUTHENTICATION_FAILED, reason)
            try:
                self.auth = self._my_auth(self._my_id())
            except AuthError as e:
                raise wire.IkeError(NotifyType.AUTHENTICATION_FAILED, f"cannot sign for the peer: {e}") from None
            ike.peer_id = (ident.id_type, bytes(ident.data))
            if any(n.type == NotifyType.INITIAL_CONTACT for n in inbound.notifies()):
                # §2.4: the peer (rebooted, say) holds no other IKE SA with us: ours are stale. Dropped before
                # this exchange's child comes up, so the data path sees the old child go, then the new one.
                ike.services.initial_contact(ike)
            self._established()
            return Status.DONE
        if ident is None or auth is None:
            error = inbound.error()
            reason = notify_name(error) if error is not None else "IKE_AUTH response without IDr or AUTH"
            ike.services.emit(Failure(ike.name, reason))
            ike.die(reason)
            return Status.FAILED
        reason = self._verify(ident, auth, certs)
        if reason is not None:
            from xdpsec.ike.sa import State
            ike.services.count("auth_failed")
            ike.services.emit(Failure(ike.name, f"AUTHENTICATION_FAILED: {reason}"))
            ike.state = State.ESTABLISHED  # the responder believes it is: tell it otherwise (§2.21.2)
            ike.delete("responder authentication failed", ike.now)
            return Status.FAILED
        self._established()
        return Status.DONE
