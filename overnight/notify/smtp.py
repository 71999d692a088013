"""The email sink: SMTP with STARTTLS (or TLS from the start) and a login.

Owns the mail: the subject, the text, the attachments (the morning report), the
TLS context (the system's CAs, or `ca_file`'s) and the conversation, whose last
answer (`250 ...`) is what the sink reports. Knows nothing about retries or the
store.
"""

from __future__ import annotations

import mimetypes
import smtplib
import ssl
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formatdate, make_msgid

from overnight.notify.base import DeliveryError, Message, Sink, sink

MAX_ATTACHMENT = 10 * 2**20


@sink("email")
class EmailSink(Sink):
    def mail(self, message: Message) -> EmailMessage:
        config = self.config
        assert config.sender is not None
        mail = EmailMessage()
        mail["Subject"] = message.headline
        mail["From"] = config.sender
        mail["To"] = ", ".join(config.to)
        mail["Date"] = formatdate(localtime=True)
        mail["Message-ID"] = make_msgid(domain="overnight")
        mail.set_content(message.text + "\n")
        for path in message.attachments:
            try:
                if path.stat().st_size > MAX_ATTACHMENT:
                    continue
                data = path.read_bytes()
            except OSError:
                continue  # the text says where it was; a lost file must not lose the mail
            kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            if path.suffix == ".md":
                kind = "text/markdown"
            main, _, sub = kind.partition("/")
            mail.add_attachment(data, maintype=main, subtype=sub, filename=path.name)
        return mail

    def _context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.config.ca_file)

    def send(self, message: Message) -> str:
        config = self.config
        assert config.host is not None and config.sender is not None
        mail = self.mail(message)
        try:
            smtp: smtplib.SMTP
            if config.security == "ssl":
                smtp = smtplib.SMTP_SSL(
                    config.host, config.port_or_default, timeout=config.timeout,
                    context=self._context(),
                )  # fmt: skip
            else:
                smtp = smtplib.SMTP(config.host, config.port_or_default, timeout=config.timeout)
            with smtp:
                smtp.ehlo()
                if config.security == "starttls":
                    smtp.starttls(context=self._context())
                    smtp.ehlo()
                password = self.secrets.get("password")
                if config.username is not None and password is not None:
                    smtp.login(config.username, password.reveal())
                code, said = smtp.mail(config.sender)
                if code != 250:
                    raise DeliveryError(f"MAIL FROM refused: {code} {_text(said)}")
                for to in config.to:
                    code, said = smtp.rcpt(to)
                    if code not in (250, 251):
                        raise DeliveryError(f"{to} refused: {code} {_text(said)}")
                # SMTP's line ends (smtplib sends bytes as they are)
                code, said = smtp.data(mail.as_bytes(policy=SMTP))
                if code != 250:
                    raise DeliveryError(f"message refused: {code} {_text(said)}")
                return f"{code} {_text(said)}"
        except smtplib.SMTPAuthenticationError as exc:
            raise DeliveryError(f"login refused: {exc.smtp_code} {_text(exc.smtp_error)}") from None
        except smtplib.SMTPNotSupportedError as exc:
            raise DeliveryError(f"the server does not offer it: {exc}") from None
        except smtplib.SMTPResponseException as exc:
            raise DeliveryError(f"{exc.smtp_code} {_text(exc.smtp_error)}") from None
        except ssl.SSLError as exc:
            raise DeliveryError(f"TLS: {exc.reason or exc}") from None
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryError(str(exc) or type(exc).__name__) from None

    def where(self) -> str:
        return f"{self.config.host}:{self.config.port_or_default}"


def _text(said: bytes | str) -> str:
    text = said.decode("utf-8", "replace") if isinstance(said, bytes) else said
    return " ".join(text.split())[:200]
