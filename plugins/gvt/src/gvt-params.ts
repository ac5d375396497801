/**
 * The figures of a GVT-g device model (vendors.md 1.3, i915's gen8 GTT and
 * register layout), in one place.
 *
 * BAR0 is 16 MiB: MMIO registers in [0, 2 MiB), the GGTT at [8 MiB, 16 MiB):
 * 8-byte entries, one per 4 KiB page of the 4 GiB graphics memory (GM) space.
 *
 * A gen8 GTT entry (GGTT and PPGTT alike) keeps, in its 64 bits:
 * bit 0 present, bit 1 writable, bit 7 PS (a 2 MiB PDE or a 1 GiB PDPE leaf),
 * bit 11 IPS (a PDE whose page table uses 64 KiB entries), and the address of
 * the frame in bits 12..45 (GTT_HAW = 46). Entries are handled as two u32
 * halves (`lo`, `hi`) so the hot paths never build a bigint.
 */

export const PAGE_SHIFT = 12;
export const PAGE_SIZE = 4096;
export const SIZE_4K = 0x1000;
export const SIZE_64K = 0x10000;
export const SIZE_2M = 0x200000;
export const SIZE_1G = 0x40000000;
export const PAGES_PER_2M = 512;
export const PAGES_PER_64K = 16;

/** Entries in one page-table page, and the stride of 64 KiB entries in a PT. */
export const GTT_ENTRIES_PER_PAGE = 512;
export const GTT_64K_PTE_STRIDE = 16;
export const GTT_ENTRY_BYTES = 8;
/** Guest and host addresses in a GTT entry are 46 bits wide. */
export const GTT_HAW = 46;

export const GEN8_PAGE_PRESENT = 1 << 0;
export const GEN8_PAGE_RW = 1 << 1;
export const GEN8_PDE_PS = 1 << 7;
export const GEN8_PDE_IPS_64K = 1 << 11;
/** The shadow-side flag kvmgt sets on the 16 4K entries of a split 64K entry (a software bit). */
export const GTT_SPTE_FLAG_64K_SPLITED = 1 << 9;
/** Address bits 32..45 live in the low 14 bits of the high half. */
export const GTT_HI_ADDR_MASK = 0x3fff;
export const GTT_LO_ADDR_MASK = 0xfffff000;

/** BAR0 layout. */
export const BAR0_BYTES = 16 << 20;
export const MMIO_BYTES = 2 << 20;
export const GGTT_OFFSET = 8 << 20;
/** The whole graphics memory space is 4 GiB: 1 Mi GGTT entries, 8 MiB of GGTT. */
export const GM_BYTES = 4 * 1024 * 1024 * 1024;
export const GGTT_ENTRIES = GM_BYTES / PAGE_SIZE;
export const GGTT_BYTES = GGTT_ENTRIES * GTT_ENTRY_BYTES;

/** MMIO registers this model emulates (BAR0 offsets; i915 names). */
export const REG = {
  /** RCS execlist submit port: four 32-bit writes, element 1 then element 0, upper dword first. */
  RCS_ELSP: 0x2230,
  /** GEN6_GDRST: writing GRDOM_FULL resets all engines. */
  GDRST: 0x941c,
  /** Primary plane A: control (bit 31 enable, pixel format in 29:26), stride in bytes, surface base gma. */
  DSPACNTR: 0x70180,
  DSPASTRIDE: 0x70188,
  DSPASURF: 0x7019c,
  /** Pipe A source size: (width - 1) << 16 | (height - 1). */
  PIPEASRC: 0x6001c,
  /** Cursor A: control (mode in bits 5:0, 0 = off), base gma. */
  CURACNTR: 0x70080,
  CURABASE: 0x70084,
  /** The PV info page (struct vgt_if) the guest driver reads to find its partition. */
  PVINFO_PAGE: 0x78000,
} as const;

export const GRDOM_FULL = 1 << 0;
export const DISPLAY_PLANE_ENABLE = 1 << 31;
export const DISPPLANE_PIXFORMAT_SHIFT = 26;
export const DISPPLANE_PIXFORMAT_MASK = 0xf << DISPPLANE_PIXFORMAT_SHIFT;
/** 32 bpp formats (BGRX8888, RGBX8888 and their 10-bit kin) and 16 bpp RGB565. */
export const DISPPLANE_BGRX888 = 0x6;
export const DISPPLANE_RGBX888 = 0xe;
export const DISPPLANE_BGRX101010 = 0xa;
export const DISPPLANE_BGRX565 = 0x5;
/** Cursor modes (CURACNTR bits 5:0): ARGB 64x64, 128x128, 256x256. */
export const CURSOR_MODE_64_ARGB = 0x27;
export const CURSOR_MODE_128_ARGB = 0x22;
export const CURSOR_MODE_256_ARGB = 0x23;

/** struct vgt_if offsets inside the PV info page. */
export const PVINFO = {
  MAGIC: 0x00,
  VERSION_MAJOR: 0x08,
  VERSION_MINOR: 0x0a,
  VGT_ID: 0x0c,
  VGT_CAPS: 0x10,
  MAPPABLE_BASE: 0x40,
  MAPPABLE_SIZE: 0x44,
  NONMAPPABLE_BASE: 0x48,
  NONMAPPABLE_SIZE: 0x4c,
  FENCE_NUM: 0x50,
} as const;
/** VGT_MAGIC, "vGTvGTvG". */
export const VGT_MAGIC = 0x4776544776544776n;

/** Execlist context descriptor: bit 0 valid, LRCA (a GGTT address) in bits 12..31. */
export const CTX_DESC_VALID = 1 << 0;
export const CTX_DESC_LRCA_MASK = 0xfffff000;
/** The logical ring context's register state page is page 1 of the context image. */
export const LRC_STATE_PN = 1;
/** Dword indexes of register values in the register state page (the LRI offset is at index - 1). */
export const CTX_RING_HEAD = 0x05;
export const CTX_RING_TAIL = 0x07;
export const CTX_RING_BUFFER_START = 0x09;
export const CTX_PDP0_UDW = 0x31;
export const CTX_PDP0_LDW = 0x33;

/** Command opcodes the scanner knows (MI client, bits 28:23). */
export const MI_NOOP = 0x00;
export const MI_BATCH_BUFFER_END = 0x0a;
export const MI_BATCH_BUFFER_START = 0x31;
/** MI_BATCH_BUFFER_START bit 8: the address is a PPGTT address. */
export const MI_BB_PPGTT = 1 << 8;

/** kvmgt's prot for every guest page it pins: IOMMU_READ | IOMMU_WRITE. */
export const PROT_RW = 3;
