/*
 * /pause: an init for kernel-only checks. It never makes a system call
 * (guest user space cannot make one on kvm_pvm hosts, see resources/README.md):
 * it spins on `pause` forever, which keeps the kernel alive and idle-ish
 * without user space doing anything.
 *
 * Built with: gcc -nostdlib -static -no-pie -O2 -o pause pause.S
 * rootfs/build.sh checks with objdump that no syscall/sysenter/int
 * instruction ended up in the binary.
 */
	.text
	.globl	_start
	.type	_start, @function
_start:
1:	pause
	jmp	1b
	.size	_start, . - _start

	.section .note.GNU-stack, "", @progbits
