/*
 * Entry point. The VMM enters in 64-bit mode with RDI = boot info (see docs/test-guest.md).
 * Only one vCPU runs the guest; any other that is started parks in hlt.
 */
	.section .text.start, "ax"
	.globl _start
_start:
	movl	$1, %eax
	lock xchgl %eax, boot_claimed(%rip)
	testl	%eax, %eax
	jnz	park
	/* Own stack, so nothing depends on the VMM's RSP. */
	leaq	stack_top(%rip), %rsp
	movq	%rdi, %rbx
	/* Zero .bss (small by design: large buffers live in .noinit). */
	cld
	leaq	__bss_start(%rip), %rdi
	leaq	__bss_end(%rip), %rcx
	subq	%rdi, %rcx
	shrq	$3, %rcx
	xorl	%eax, %eax
	rep stosq
	movq	%rbx, %rdi
	call	guest_main
park:
	hlt
	jmp	park

	.section .data
	.balign 4
boot_claimed:
	.long	0

	.section .noinit, "aw", @nobits
	.balign 16
	.skip	16384
stack_top:

	.section .note.GNU-stack, "", @progbits
