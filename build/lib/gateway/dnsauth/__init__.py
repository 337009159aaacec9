"""Sending domains' DNS: the records to publish and their verification (dnspython, async).

- ``lookup``: one async resolver wrapper whose answers say found / absent / could not check;
- ``spf``: RFC 7208 ``check_host()`` with includes followed and the 10-lookup limit;
- ``dmarc``: RFC 7489 record parsing and identifier alignment;
- ``records``: what to publish for a domain (and a BIND zone snippet, the MTA-STS policy);
- ``verify``: each record checked (found / missing / wrong / could not check), the domain's
  verdict, and the bulk-sender readiness report.
"""
