/* A guest that triple-faults: #UD with no IDT (flint enters with an empty
 * IDT) cannot be delivered, so it becomes #DF, then a shutdown. */
	.text
	.globl _start
_start:
	ud2
