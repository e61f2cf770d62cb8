/* A guest that counts: it adds one to a counter in its memory and prints
 * "count N" on COM1, for ever, with a pause between lines. The snapshot
 * tests restore it and check that the count goes on from where it was:
 * its registers, its memory and its serial port all came back. */
	.set COM1, 0x3f8
	.set DELAY, 100000
	.text
	.globl _start
_start:
	lea count(%rip), %rbx
next:
	incq (%rbx)
	mov $COM1, %dx
	lea msg(%rip), %rsi
1:	movb (%rsi), %al
	test %al, %al
	jz 2f
	outb %al, (%dx)
	inc %rsi
	jmp 1b
2:	mov (%rbx), %rax
	lea end(%rip), %rdi
	mov $10, %rcx
3:	xor %edx, %edx
	div %rcx
	add $'0', %dl
	dec %rdi
	mov %dl, (%rdi)
	test %rax, %rax
	jnz 3b
	mov $COM1, %dx
	lea end(%rip), %rsi
4:	movb (%rdi), %al
	outb %al, (%dx)
	inc %rdi
	cmp %rsi, %rdi
	jne 4b
	movb $'\n', %al
	outb %al, (%dx)
	mov $DELAY, %rcx
5:	dec %rcx
	jnz 5b
	jmp next

	.data
count:	.quad 0
buf:	.space 24
end:
msg:	.asciz "count "
