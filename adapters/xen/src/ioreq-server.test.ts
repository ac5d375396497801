import { expect } from "chai";
import { createIoreqServer, HVMMEM_ioreq_server, HVMMEM_ram_ro, HVMMEM_ram_rw, IoreqServer, setMemType, STATE_IORESP_READY, XEN_DMOP_IOREQ_MEM_ACCESS_READ, XEN_DMOP_IOREQ_MEM_ACCESS_WRITE, type Ioreq } from "./ioreq-server.js";
import { P2mType } from "./p2m.js";
import { MiB, NO_XEN_LEAKS, leaksAfterShutdown, xenEnv, type XenEnv } from "./xen-env.test.util.js";

describe("write tracking by an ioreq server", () => {
  let env: XenEnv;
  let seen: Ioreq[];
  afterEach(() => {
    expect(leaksAfterShutdown(env)).to.deep.equal(NO_XEN_LEAKS);
  });

  const server = (handler: (r: Ioreq) => number = (r) => (seen.push(r), 0)): IoreqServer => {
    env = xenEnv();
    seen = [];
    const s = createIoreqServer(env.xen, env.dom0, env.guest.domid, handler);
    expect(s).to.be.instanceOf(IoreqServer);
    return s as IoreqServer;
  };

  it("refuses unprivileged callers, unknown or PV targets", () => {
    const s = server();
    expect(createIoreqServer(env.xen, env.guest, env.guest.domid, () => 0)).to.equal(-1);
    expect(createIoreqServer(env.xen, env.dom0, 999, () => 0)).to.equal(-3);
    const pv = env.xen.createGuest({ name: "pv", kind: "pv", memoryBytes: 4n * MiB });
    expect(createIoreqServer(env.xen, env.dom0, pv.domid, () => 0)).to.equal(-22);
    expect(s.mapMemType(HVMMEM_ram_rw, XEN_DMOP_IOREQ_MEM_ACCESS_WRITE)).to.equal(-22);
    expect(s.mapMemType(HVMMEM_ioreq_server, XEN_DMOP_IOREQ_MEM_ACCESS_READ | XEN_DMOP_IOREQ_MEM_ACCESS_WRITE)).to.equal(-22);
    expect(setMemType(env.xen, env.guest, env.guest.domid, 1, 1, HVMMEM_ram_rw)).to.equal(-1);
  });

  it("intercepts writes, not reads, to protected frames; delivers the data; the emulated write lands", () => {
    const s = server();
    const { xen, dom0, guest } = env;
    expect(setMemType(xen, dom0, guest.domid, 0x20, 1, HVMMEM_ioreq_server)).to.equal(-22);
    expect(s.mapMemType(HVMMEM_ioreq_server, XEN_DMOP_IOREQ_MEM_ACCESS_WRITE)).to.equal(0);
    expect(s.setState(true)).to.equal(0);
    expect(setMemType(xen, dom0, guest.domid, 0x20, 2, HVMMEM_ioreq_server)).to.equal(0);
    expect(guest.p2m!.type(0x21)).to.equal(P2mType.ioreq_server);
    expect(guest.vcpuWrite(0x20ff8n, Uint8Array.of(1, 2, 3, 4, 5, 6, 7, 8, 9, 10))).to.equal(0);
    expect(guest.vcpuWrite(0x30000n, Uint8Array.of(1))).to.equal(0);
    expect(seen.map((r) => [r.addr, [...r.data], r.size, r.state])).to.deep.equal([
      [0x20ff8n, [1, 2, 3, 4, 5, 6, 7, 8], 8, STATE_IORESP_READY],
      [0x21000n, [9, 10], 2, STATE_IORESP_READY],
    ]);
    const out = new Uint8Array(10);
    expect(guest.vcpuRead(0x20ff8n, out)).to.equal(0);
    expect([...out]).to.deep.equal([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    expect(seen.length).to.equal(2);
    expect(setMemType(xen, dom0, guest.domid, 0x20, 1, HVMMEM_ram_rw)).to.equal(0);
    expect(guest.vcpuWrite(0x20000n, Uint8Array.of(1))).to.equal(0);
    expect(seen.length).to.equal(2);
    expect(s.mapMemType(HVMMEM_ioreq_server, 0)).to.equal(0);
    expect(guest.p2m!.type(0x21)).to.equal(P2mType.ram_rw);
    expect([s.requests, s.failures]).to.deep.equal([2, 0]);
  });

  it("allows one server per domain to claim the type", () => {
    const s = server();
    const other = createIoreqServer(env.xen, env.dom0, env.guest.domid, () => 0) as IoreqServer;
    expect(s.mapMemType(HVMMEM_ioreq_server, XEN_DMOP_IOREQ_MEM_ACCESS_WRITE)).to.equal(0);
    expect(other.mapMemType(HVMMEM_ioreq_server, XEN_DMOP_IOREQ_MEM_ACCESS_WRITE)).to.equal(-16);
    expect(s.claimsType).to.equal(true);
    expect(other.claimsType).to.equal(false);
  });

  it("checks set_mem_type's range and transitions; a paged frame starts a populate and answers -EAGAIN", () => {
    const s = server();
    const { xen, dom0, guest } = env;
    s.mapMemType(HVMMEM_ioreq_server, XEN_DMOP_IOREQ_MEM_ACCESS_WRITE);
    expect(setMemType(xen, dom0, guest.domid, guest.maxGfn - 1, 2, HVMMEM_ioreq_server)).to.equal(-22);
    expect(setMemType(xen, dom0, guest.domid, 1, 0, HVMMEM_ioreq_server)).to.equal(-22);
    expect(setMemType(xen, dom0, guest.domid, 1, 1, HVMMEM_ram_ro)).to.equal(-22);
    expect(setMemType(xen, dom0, 999, 1, 1, HVMMEM_ram_rw)).to.equal(-3);
    expect(guest.pageOut(0x40)).to.equal(0);
    expect(setMemType(xen, dom0, guest.domid, 0x3f, 2, HVMMEM_ioreq_server)).to.equal(-11);
    expect(guest.p2m!.type(0x3f)).to.equal(P2mType.ram_rw);
    expect(guest.pendingPopulates).to.deep.equal([0x40]);
  });

  for (const [name, handler] of [
    ["returns an error", (): number => -5],
    [
      "throws",
      (): number => {
        throw new Error("bad shadow entry");
      },
    ],
  ] as const) {
    it(`crashes the guest when emulation ${name}; later operations on it fail`, () => {
      const s = server(handler);
      const { xen, dom0, guest } = env;
      s.mapMemType(HVMMEM_ioreq_server, XEN_DMOP_IOREQ_MEM_ACCESS_WRITE);
      s.setState(true);
      setMemType(xen, dom0, guest.domid, 0x20, 1, HVMMEM_ioreq_server);
      const before = new Uint8Array(1);
      guest.readGuest(0x20000n, before);
      expect(guest.vcpuWrite(0x20000n, Uint8Array.of(0xee))).to.equal(-5);
      expect(guest.state).to.equal("crashed");
      expect(guest.crashReason).to.match(/emulation of a write to 20000 failed/);
      const after = new Uint8Array(1);
      guest.readGuest(0x20000n, after);
      expect(after[0]).to.equal(before[0]);
      expect([s.requests, s.failures]).to.deep.equal([1, 1]);
      expect(guest.vcpuWrite(0x30000n, Uint8Array.of(1))).to.equal(-3);
      expect(setMemType(xen, dom0, guest.domid, 0x21, 1, HVMMEM_ioreq_server)).to.equal(-3);
      expect(s.setState(false)).to.equal(-3);
      expect(s.mapMemType(HVMMEM_ioreq_server, 0)).to.equal(-3);
    });
  }
});
