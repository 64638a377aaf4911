#!/usr/bin/python3
"""Interop: bounded request-buffer memory with many concurrent clients."""
import re
import threading
import unittest

import nbd

from nbdmgr_fixture import Daemon

MiB = 1 << 20
CONNECTIONS = 64
REQUEST = 32 * MiB
CAP = 64 * MiB


class CappedDaemonTest(unittest.TestCase):
    def run_clients(self, d, export):
        errors = []

        def client(i):
            try:
                h = nbd.NBD()
                h.connect_uri(d.uri(export))
                data = bytes([i % 251 + 1]) * REQUEST
                h.pwrite(data, i * REQUEST)
                back = h.pread(REQUEST, i * REQUEST)
                if back != data:
                    errors.append(f"client {i}: data mismatch")
                h.shutdown()
            except Exception as e:  # noqa: BLE001 - collected and asserted
                errors.append(f"client {i}: {e!r}")

        threads = [threading.Thread(target=client, args=(i,)) for i in range(CONNECTIONS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        return errors

    def check(self, strategy):
        d = Daemon([f"name=big,backend=memory,size={CONNECTIONS * 32}MiB,"
                    f"buffer-strategy={strategy}"],
                   extra=["--memory-cap", "64MiB", "--connection-share", "100",
                          "--connection-memory", "none"])
        try:
            d.start()
            errors = self.run_clients(d, "big")
            self.assertEqual(d.stop(), 0, d.logs())
            self.assertEqual(errors, [])
            m = re.search(r"request buffers: peak (\d+) bytes in use \(cap (\d+)\), (\d+) charges refused",
                          d.logs())
            self.assertIsNotNone(m, d.logs())
            peak, cap, refused = map(int, m.groups())
            self.assertEqual(cap, CAP)
            self.assertLessEqual(peak, CAP)
            return peak, refused
        finally:
            d.cleanup()

    def test_pool_with_64MiB_cap_64_clients_32MiB_each(self):
        peak, refused = self.check("pool")
        self.assertGreater(refused, 0, "64 x 32 MiB must have found a 64 MiB cap full")

    def test_exact_with_64MiB_cap(self):
        self.check("exact")

    def test_fixed_with_64MiB_cap_streams_instead_of_deadlocking(self):
        self.check("fixed")


if __name__ == "__main__":
    unittest.main()
