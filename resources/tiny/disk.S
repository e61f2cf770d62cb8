/* A guest that drives its disk itself: a virtio-block driver in a few
 * dozen instructions. It sets up queue 0 of the virtio-mmio device in
 * flint's first window (the VM's only device: one drive), reads sector 0,
 * writes what it read to sector 1, and resets through the i8042 (flint
 * exits 0). A request that fails ends it with ud2 (a triple fault: flint
 * exits 3). The many-VMs test runs twenty at once: each disk must end with
 * its own sector 0 in sector 1. No interrupts: it polls the used ring. */
	.set MMIO,   0xc0001000	/* the first virtio-mmio window */
	.set PDPT,   0xa000	/* flint's boot page tables: PDPT[3] maps 3-4 GiB */
	.set PD_HI,  0x300000	/* a page directory for 3-4 GiB */
	.set DESC,   0x200000	/* queue 0: descriptor table, */
	.set AVAIL,  0x201000	/* driver (available) ring, */
	.set USED,   0x202000	/* device (used) ring */
	.set HDR,    0x203000	/* request header: type, reserved, sector */
	.set DATA,   0x204000	/* one sector */
	.set STATUS, 0x205000	/* the device's status byte */
	/* virtio-mmio registers */
	.set FEATURES, 0x20
	.set FEATURES_SEL, 0x24
	.set QUEUE_SEL, 0x30
	.set QUEUE_NUM, 0x38
	.set QUEUE_READY, 0x44
	.set QUEUE_NOTIFY, 0x50
	.set STATUS_REG, 0x70
	.set QUEUE_DESC, 0x80
	.set QUEUE_DRIVER, 0x90
	.set QUEUE_DEVICE, 0xa0

	.text
	.globl _start
_start:
	/* Map 3-4 GiB (the MMIO gap) with uncached 2 MiB pages. */
	mov $PD_HI, %rdi
	movabs $0xc000009b, %rax	/* P | RW | PWT | PCD | PS */
	mov $512, %rcx
1:	mov %rax, (%rdi)
	add $8, %rdi
	add $0x200000, %rax
	dec %rcx
	jnz 1b
	movq $(PD_HI | 3), PDPT + 3 * 8
	mov %cr3, %rax
	mov %rax, %cr3

	/* Device initialisation (virtio 1.x, 3.1.1). */
	mov $MMIO, %ebx
	movl $0, STATUS_REG(%rbx)		/* reset */
	movl $3, STATUS_REG(%rbx)		/* ACKNOWLEDGE | DRIVER */
	movl $1, FEATURES_SEL(%rbx)
	movl $1, FEATURES(%rbx)			/* VIRTIO_F_VERSION_1 (bit 32) */
	movl $0, FEATURES_SEL(%rbx)
	movl $0, FEATURES(%rbx)
	movl $11, STATUS_REG(%rbx)		/* | FEATURES_OK */
	testl $8, STATUS_REG(%rbx)
	jz fail
	movl $0, QUEUE_SEL(%rbx)
	movl $8, QUEUE_NUM(%rbx)
	movl $DESC, QUEUE_DESC(%rbx)
	movl $0, QUEUE_DESC + 4(%rbx)
	movl $AVAIL, QUEUE_DRIVER(%rbx)
	movl $0, QUEUE_DRIVER + 4(%rbx)
	movl $USED, QUEUE_DEVICE(%rbx)
	movl $0, QUEUE_DEVICE + 4(%rbx)
	movl $1, QUEUE_READY(%rbx)
	movl $15, STATUS_REG(%rbx)		/* | DRIVER_OK */

	/* One chain for both requests: header, data, status. */
	movq $HDR, DESC
	movl $16, DESC + 8
	movw $1, DESC + 12			/* NEXT */
	movw $1, DESC + 14
	movq $DATA, DESC + 16
	movl $512, DESC + 24
	movw $3, DESC + 28			/* NEXT | WRITE: the device fills it */
	movw $2, DESC + 30
	movq $STATUS, DESC + 32
	movl $1, DESC + 40
	movw $2, DESC + 44			/* WRITE */

	/* Read sector 0. */
	movl $0, HDR				/* VIRTIO_BLK_T_IN */
	movq $0, HDR + 8
	movb $0xff, STATUS
	movw $0, AVAIL + 4			/* ring[0] = chain 0 */
	movw $1, AVAIL + 2			/* idx = 1 */
	movl $0, QUEUE_NOTIFY(%rbx)
2:	pause
	cmpw $1, USED + 2
	jne 2b
	cmpb $0, STATUS
	jne fail

	/* Write it to sector 1. */
	movl $1, HDR				/* VIRTIO_BLK_T_OUT */
	movq $1, HDR + 8
	movw $1, DESC + 28			/* NEXT: the device reads it */
	movb $0xff, STATUS
	movw $0, AVAIL + 6			/* ring[1] = chain 0 */
	movw $2, AVAIL + 2
	movl $0, QUEUE_NOTIFY(%rbx)
3:	pause
	cmpw $2, USED + 2
	jne 3b
	cmpb $0, STATUS
	jne fail

	movb $0xfe, %al				/* reset through the i8042 */
	outb %al, $0x64
4:	hlt
	jmp 4b
fail:
	ud2
